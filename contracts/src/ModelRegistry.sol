// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {Nonces} from "@openzeppelin/contracts/utils/Nonces.sol";

/// @title Who made a model, and where its royalties go
/// @notice A model id is the hash of its manifest (see docs/ARCHITECTURE.md). Its creator
/// registers the id with a payout address; from then on only the creator's key can change the
/// payout or hand the registration on. The creator key is the EVM address whose identity
/// binding (Staking.peerIdOf) names the libp2p key that signed the model's card, so nodes
/// check a card against the registration off chain. The DAO (the owner) can reassign a
/// registration shown to be squatted and set a model's royalty share within bounds.
/// A model nobody registered pays its creator share to the DAO fund (the escrow does that).
contract ModelRegistry is Ownable2Step, EIP712, Nonces {
    /// @notice Basis points of every redeemed payment.
    uint16 public constant BPS = 10_000;
    /// @notice The seed's royalty: 20% to the creator.
    uint16 public constant DEFAULT_ROYALTY_BPS = 2_000;
    /// @notice Lowest royalty the DAO may set.
    uint16 public constant MIN_ROYALTY_BPS = 1_000;
    /// @notice Highest royalty the DAO may set: the node's 70% never shrinks, so the DAO keeps at least 5%.
    uint16 public constant MAX_ROYALTY_BPS = 2_500;

    bytes32 private constant REGISTER_TYPEHASH =
        keccak256("Register(bytes32 model,address creator,address payout,uint256 nonce,uint256 deadline)");

    /// @notice One model's registration.
    struct Registration {
        address creator;
        address payout;
        /// 0 means the default.
        uint16 royaltyBps;
    }

    mapping(bytes32 model => Registration) private _registrations;

    /// @notice A model was registered (or reassigned by the DAO).
    event Registered(bytes32 indexed model, address indexed creator, address payout);
    /// @notice The creator changed where royalties go.
    event PayoutChanged(bytes32 indexed model, address payout);
    /// @notice The creator handed the registration to another key.
    event CreatorChanged(bytes32 indexed model, address indexed creator);
    /// @notice The DAO set a model's royalty share.
    event RoyaltyChanged(bytes32 indexed model, uint16 bps);

    /// @notice Someone else registered this model first.
    error AlreadyRegistered(bytes32 model, address creator);
    /// @notice Nobody registered this model.
    error NotRegistered(bytes32 model);
    /// @notice Only the model's creator may do this.
    error NotCreator(bytes32 model, address caller);
    /// @notice A zero payout or creator address.
    error ZeroAddress();
    /// @notice A royalty outside [MIN_ROYALTY_BPS, MAX_ROYALTY_BPS].
    error RoyaltyOutOfBounds(uint16 bps);
    /// @notice The signature is not the creator's, or has expired.
    error BadSignature();

    /// @param dao the DAO's address (the owner)
    constructor(address dao) Ownable(dao) EIP712("AI Torrent ModelRegistry", "1") {}

    /// @notice Registers `model` with the caller as its creator.
    function register(bytes32 model, address payout) external {
        _register(model, msg.sender, payout);
    }

    /// @notice Registers `model` for `creator`, who signed an EIP-712 `Register`: lets a creator
    /// with no ETH for gas (a tab) register through a relay.
    function registerBySig(bytes32 model, address creator, address payout, uint256 deadline, bytes calldata signature)
        external
    {
        if (block.timestamp > deadline) revert BadSignature();
        bytes32 digest = _hashTypedDataV4(
            keccak256(abi.encode(REGISTER_TYPEHASH, model, creator, payout, _useNonce(creator), deadline))
        );
        if (!SignatureChecker.isValidSignatureNow(creator, digest, signature)) revert BadSignature();
        _register(model, creator, payout);
    }

    /// @notice The creator sends royalties elsewhere.
    function setPayout(bytes32 model, address payout) external {
        Registration storage r = _creatorOnly(model);
        if (payout == address(0)) revert ZeroAddress();
        r.payout = payout;
        emit PayoutChanged(model, payout);
    }

    /// @notice The creator hands the registration to another key.
    function transferCreator(bytes32 model, address creator) external {
        Registration storage r = _creatorOnly(model);
        if (creator == address(0)) revert ZeroAddress();
        r.creator = creator;
        emit CreatorChanged(model, creator);
    }

    /// @notice The DAO gives a squatted registration to the model's real creator.
    function reassign(bytes32 model, address creator, address payout) external onlyOwner {
        if (creator == address(0) || payout == address(0)) revert ZeroAddress();
        Registration storage r = _registrations[model];
        r.creator = creator;
        r.payout = payout;
        emit Registered(model, creator, payout);
    }

    /// @notice The DAO sets a model's royalty share.
    function setRoyalty(bytes32 model, uint16 bps) external onlyOwner {
        if (bps < MIN_ROYALTY_BPS || bps > MAX_ROYALTY_BPS) revert RoyaltyOutOfBounds(bps);
        _registrations[model].royaltyBps = bps;
        emit RoyaltyChanged(model, bps);
    }

    /// @notice A model's creator and payout address (zero when unregistered).
    function registration(bytes32 model) external view returns (address creator, address payout) {
        Registration storage r = _registrations[model];
        return (r.creator, r.payout);
    }

    /// @notice Where a model's royalty goes (zero: to the DAO) and its share in basis points.
    function royaltyOf(bytes32 model) external view returns (address payout, uint16 bps) {
        Registration storage r = _registrations[model];
        return (r.payout, r.royaltyBps == 0 ? DEFAULT_ROYALTY_BPS : r.royaltyBps);
    }

    function _register(bytes32 model, address creator, address payout) private {
        if (creator == address(0) || payout == address(0)) revert ZeroAddress();
        Registration storage r = _registrations[model];
        if (r.creator != address(0)) revert AlreadyRegistered(model, r.creator);
        r.creator = creator;
        r.payout = payout;
        emit Registered(model, creator, payout);
    }

    function _creatorOnly(bytes32 model) private view returns (Registration storage r) {
        r = _registrations[model];
        if (r.creator == address(0)) revert NotRegistered(model);
        if (r.creator != msg.sender) revert NotCreator(model, msg.sender);
    }
}
