// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

/// @title Node identities and stakes
/// @notice A node's EVM key binds its libp2p peer id here (the transaction is the EVM key's
/// signature of the peer id; the node's signed record, checked off chain, names the EVM
/// address, so the binding holds both ways and nobody can claim another's stake or priority).
/// Nodes stake AIT; unstaking waits an unbonding period longer than the audit and escalation
/// window, so a node caught lying cannot leave with its stake. `slash` belongs to the arbiter
/// role (the tribunal, `Tribunal.sol`, or an address the DAO grants it to), and slashed AIT
/// goes to the DAO fund. The arbiter may also lock a node's stake while a case about it (or
/// one it judges or sits on the jury of) is open: a locked node can neither unbond nor
/// withdraw. A node with stake cannot change its binding, so a case against it cannot be
/// dodged by binding its peer id elsewhere.
contract Staking is AccessControl, ReentrancyGuard {
    using SafeERC20 for IERC20;

    /// @notice The role that may slash.
    bytes32 public constant ARBITER_ROLE = keccak256("ARBITER_ROLE");
    /// @notice Longest peer id accepted, in bytes (a multihash of an ed25519 key is 38).
    uint256 public constant MAX_PEER_ID = 64;

    /// @notice The AIT token.
    IERC20 public immutable token;
    /// @notice Where slashed stake goes.
    address public immutable treasury;
    /// @notice Seconds between `unbond` and `withdraw`.
    uint64 public immutable unbondingPeriod;

    /// @notice One node's stake.
    struct Stake {
        uint256 staked;
        uint256 unbonding;
        uint64 unbondEnd;
    }

    mapping(address node => Stake) private _stakes;
    mapping(address node => bytes peerId) private _peerIds;
    /// All locks on a node, and each arbiter's share of them.
    mapping(address node => uint256 count) private _locks;
    mapping(address node => mapping(address arbiter => uint256 count)) private _locksBy;

    /// @notice `node` bound its EVM address to `peerId`.
    event Bound(address indexed node, bytes peerId);
    /// @notice `node` staked `amount` more.
    event Staked(address indexed node, uint256 amount);
    /// @notice `node` now unbonds `amount` in all, free at `unbondEnd`.
    event Unbonding(address indexed node, uint256 amount, uint64 unbondEnd);
    /// @notice `node` withdrew `amount`.
    event Withdrawn(address indexed node, uint256 amount);
    /// @notice `node` lost `amount`; `evidence` names the fraud report.
    event Slashed(address indexed node, uint256 amount, bytes32 evidence);

    /// @notice An empty or overlong peer id.
    error BadPeerId();
    /// @notice Zero, or more than is staked.
    error BadAmount(uint256 amount, uint256 available);
    /// @notice Nothing unbonded yet.
    error StillBonded(uint64 unbondEnd);
    /// @notice The arbiter locked this node's stake while a case is open.
    error Locked(address node);
    /// @notice A node with stake keeps the peer id it bound.
    error BindingFixed();

    /// @param aitToken the AIT token
    /// @param treasury_ the DAO fund
    /// @param unbondingSeconds the unbonding period
    /// @param dao the admin, who grants ARBITER_ROLE
    /// @param arbiter the first arbiter (zero for none)
    constructor(IERC20 aitToken, address treasury_, uint64 unbondingSeconds, address dao, address arbiter) {
        if (unbondingSeconds == 0 || unbondingSeconds > 365 days) revert BadAmount(unbondingSeconds, 365 days);
        token = aitToken;
        treasury = treasury_;
        unbondingPeriod = unbondingSeconds;
        _grantRole(DEFAULT_ADMIN_ROLE, dao);
        if (arbiter != address(0)) _grantRole(ARBITER_ROLE, arbiter);
    }

    /// @notice Binds the caller's address to its libp2p peer id (replacing an earlier binding,
    /// which only a node with nothing staked or unbonding may do).
    function bind(bytes calldata peerId) external {
        if (peerId.length == 0 || peerId.length > MAX_PEER_ID) revert BadPeerId();
        Stake storage st = _stakes[msg.sender];
        bytes storage old = _peerIds[msg.sender];
        if (old.length != 0 && st.staked + st.unbonding > 0 && keccak256(old) != keccak256(peerId)) {
            revert BindingFixed();
        }
        _peerIds[msg.sender] = peerId;
        emit Bound(msg.sender, peerId);
    }

    /// @notice The peer id `node` bound (empty when none).
    function peerIdOf(address node) external view returns (bytes memory) {
        return _peerIds[node];
    }

    /// @notice Stakes `amount` (approved beforehand).
    function stake(uint256 amount) external nonReentrant {
        _stake(msg.sender, amount);
    }

    /// @notice Stakes `amount` for `node`, which signed an EIP-2612 permit for it (anyone may submit).
    function stakeWithPermit(address node, uint256 amount, uint256 deadline, uint8 v, bytes32 r, bytes32 s)
        external
        nonReentrant
    {
        // A permit someone already submitted fails; the allowance it set still counts, but only
        // the node may spend it so, or anyone could lock (and expose to slashing) its allowance.
        try IERC20Permit(address(token)).permit(node, address(this), amount, deadline, v, r, s) {}
        catch {
            if (msg.sender != node) revert BadAmount(amount, 0);
        }
        _stake(node, amount);
    }

    /// @notice Starts unbonding `amount` more; the unbonding period starts again for all of it.
    function unbond(uint256 amount) external {
        if (_locks[msg.sender] > 0) revert Locked(msg.sender);
        Stake storage st = _stakes[msg.sender];
        if (amount == 0 || amount > st.staked) revert BadAmount(amount, st.staked);
        st.staked -= amount;
        st.unbonding += amount;
        st.unbondEnd = uint64(block.timestamp) + unbondingPeriod;
        emit Unbonding(msg.sender, st.unbonding, st.unbondEnd);
    }

    /// @notice Withdraws what finished unbonding.
    function withdraw() external nonReentrant {
        if (_locks[msg.sender] > 0) revert Locked(msg.sender);
        Stake storage st = _stakes[msg.sender];
        if (st.unbonding == 0) revert BadAmount(0, 0);
        if (block.timestamp < st.unbondEnd) revert StillBonded(st.unbondEnd);
        uint256 amount = st.unbonding;
        st.unbonding = 0;
        token.safeTransfer(msg.sender, amount);
        emit Withdrawn(msg.sender, amount);
    }

    /// @notice Takes up to `amount` of `node`'s stake (bonded first, then unbonding) to the DAO fund.
    function slash(address node, uint256 amount, bytes32 evidence)
        external
        onlyRole(ARBITER_ROLE)
        nonReentrant
        returns (uint256 taken)
    {
        Stake storage st = _stakes[node];
        uint256 fromStaked = amount < st.staked ? amount : st.staked;
        st.staked -= fromStaked;
        uint256 rest = amount - fromStaked;
        uint256 fromUnbonding = rest < st.unbonding ? rest : st.unbonding;
        st.unbonding -= fromUnbonding;
        taken = fromStaked + fromUnbonding;
        if (taken > 0) token.safeTransfer(treasury, taken);
        emit Slashed(node, taken, evidence);
    }

    /// @notice Locks `node`'s stake once more (the arbiter, while a case involving it is open).
    function lock(address node) external onlyRole(ARBITER_ROLE) {
        _locks[node] += 1;
        _locksBy[node][msg.sender] += 1;
    }

    /// @notice Lifts one of the locks the caller put on `node` (no role needed: an arbiter
    /// whose role was revoked can still close what it opened, and none can lift another's).
    function unlock(address node) external {
        if (_locksBy[node][msg.sender] == 0) revert Locked(node);
        _locksBy[node][msg.sender] -= 1;
        _locks[node] -= 1;
    }

    /// @notice How many locks hold `node`'s stake.
    function locksOf(address node) external view returns (uint256) {
        return _locks[node];
    }

    /// @notice `node`'s bonded stake, unbonding amount and when that unbonds.
    function stakeOf(address node) external view returns (uint256 staked, uint256 unbonding, uint64 unbondEnd) {
        Stake storage st = _stakes[node];
        return (st.staked, st.unbonding, st.unbondEnd);
    }

    function _stake(address node, uint256 amount) private {
        if (amount == 0) revert BadAmount(0, 0);
        _stakes[node].staked += amount;
        token.safeTransferFrom(node, address(this), amount);
        emit Staked(node, amount);
    }
}
