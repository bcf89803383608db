// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {Multicall} from "@openzeppelin/contracts/utils/Multicall.sol";
import {Nonces} from "@openzeppelin/contracts/utils/Nonces.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

/// @notice What the escrow needs of the model registry.
interface IRoyalties {
    /// @notice Where a model's royalty goes (zero: to the DAO) and its share in basis points.
    function royaltyOf(bytes32 model) external view returns (address payout, uint16 bps);
}

/// @title Deposits, allocations and cumulative vouchers
/// @notice The pattern of The Graph's TAP escrow. A payer deposits AIT once into its free
/// balance and allocates from it to each node it uses, so no deposit backs more promises than
/// it holds: a node reads its allocation before serving. Off chain, the payer's key or a
/// session key it authorized signs EIP-712 vouchers whose amount is cumulative per (payer,
/// session, node); `redeem` pays the difference to what was collected, in full or reverts, and
/// splits it 70% to the node, the model's royalty (20% by default) to its creator and the
/// rest (10%) to the DAO fund, rounding dust included. Shares are credited to `earned` and
/// withdrawn, or spent as a deposit, by whoever holds them. Anyone may submit a redeem: the
/// funds go to the node the voucher names.
///
/// Money that backs a promise leaves only after a thaw period longer than the audit window:
/// free balance and allocations thaw before a withdraw, and a session key stays valid for a
/// thaw period after its payer starts revoking it, so a node can always redeem what it holds.
contract Escrow is EIP712, Nonces, ReentrancyGuard, Multicall {
    using SafeERC20 for IERC20;

    /// @notice Basis points.
    uint16 public constant BPS = 10_000;
    /// @notice The serving node's share.
    uint16 public constant NODE_BPS = 7_000;

    /// @notice EIP-712 type of a voucher.
    bytes32 public constant VOUCHER_TYPEHASH = keccak256(
        "Voucher(bytes32 session,address payer,address node,bytes32 model,uint256 cumulativeAmount,uint256 cumulativeWork,bytes32 receipts,uint64 expiry)"
    );
    /// @notice EIP-712 type of a payer's authorization of a session key.
    bytes32 public constant AUTHORIZE_TYPEHASH =
        keccak256("AuthorizeSigner(address payer,address signer,uint256 nonce,uint256 deadline)");
    /// @notice EIP-712 type of a signed allocation (cumulative per payer and node).
    bytes32 public constant ALLOCATION_TYPEHASH =
        keccak256("Allocation(address payer,address node,uint256 cumulativeAllocated,uint64 deadline)");

    /// @notice A payer's promise to one node for one session, to date.
    struct Voucher {
        bytes32 session;
        address payer;
        address node;
        bytes32 model;
        uint256 cumulativeAmount;
        uint256 cumulativeWork;
        /// The node's receipts for that work, chained into one hash (web-node's
        /// `trust::receipt::ReceiptChain`): what exactly the payer signed for. The node checks it
        /// against the receipts it signed before it takes the voucher; the escrow only records it.
        bytes32 receipts;
        uint64 expiry;
    }

    /// @notice A payer's signed allocation to a node, cumulative over all its allocations to it.
    struct Allocation {
        address payer;
        address node;
        uint256 cumulativeAllocated;
        uint64 deadline;
    }

    /// @notice A balance and the part of it that thaws.
    struct Account {
        uint256 balance;
        uint256 thawing;
        uint64 thawEnd;
    }

    /// @notice The AIT token.
    IERC20 public immutable token;
    /// @notice Where royalties are looked up.
    IRoyalties public immutable registry;
    /// @notice The DAO fund.
    address public immutable treasury;
    /// @notice Seconds a withdraw or a signer revocation waits (longer than the audit window).
    uint64 public immutable thawPeriod;

    mapping(address payer => Account) private _free;
    mapping(address payer => mapping(address node => Account)) private _allocations;
    mapping(address payer => mapping(address node => uint256)) private _allocatedTotal;
    /// 0: not a signer; type(uint64).max: a signer; else the time its revocation takes effect.
    mapping(address payer => mapping(address signer => uint64)) private _signerUntil;
    mapping(bytes32 key => uint256) private _collected;

    /// @notice AIT credited to each address by redeems, not yet withdrawn or spent.
    mapping(address who => uint256) public earned;

    /// @notice `payer` deposited `amount` into its free balance.
    event Deposited(address indexed payer, uint256 amount);
    /// @notice `payer` allocated `amount` more to `node`.
    event Allocated(address indexed payer, address indexed node, uint256 amount);
    /// @notice `payer` started thawing `amount` of an account (`node` zero: the free balance).
    event Thawing(address indexed payer, address indexed node, uint256 amount, uint64 thawEnd);
    /// @notice `payer` withdrew `amount` from an account (`node` zero: the free balance).
    event Withdrawn(address indexed payer, address indexed node, uint256 amount);
    /// @notice `payer` authorized `signer` to sign its vouchers and allocations.
    event SignerAuthorized(address indexed payer, address indexed signer);
    /// @notice `payer` started revoking `signer`, effective at `until`.
    event SignerRevoking(address indexed payer, address indexed signer, uint64 until);
    /// @notice A voucher paid `amount` more to date for (`payer`, `session`, `node`), for the work
    /// and the node's receipts it names.
    event Redeemed(
        address indexed payer,
        address indexed node,
        bytes32 indexed session,
        bytes32 model,
        uint256 amount,
        uint256 cumulativeWork,
        bytes32 receipts,
        uint256 nodeShare,
        uint256 creatorShare,
        uint256 daoShare
    );
    /// @notice `who` took `amount` of its earnings to its wallet.
    event EarnedWithdrawn(address indexed who, uint256 amount);
    /// @notice `who` moved `amount` of its earnings into its free balance.
    event EarnedDeposited(address indexed who, uint256 amount);

    /// @notice Zero, or more than the account holds.
    error BadAmount(uint256 amount, uint256 available);
    /// @notice The thaw period has not passed (or nothing thaws).
    error NotThawed(uint64 thawEnd);
    /// @notice The voucher's expiry has passed.
    error Expired(uint64 expiry);
    /// @notice A signature by a key that is neither the payer nor one of its signers.
    error UnauthorizedSigner(address signer);
    /// @notice A signature that is not the payer's, or has expired.
    error BadSignature();
    /// @notice The voucher's amount is not above what was collected: a replay or an older voucher.
    error NothingToCollect(uint256 collected, uint256 cumulativeAmount);
    /// @notice The node's allocation does not cover the voucher: nothing is paid.
    error InsufficientAllocation(uint256 owed, uint256 allocation);
    /// @notice A batch whose vouchers and signatures do not pair up.
    error LengthMismatch();
    /// @notice A thaw period of zero or over a year.
    error BadThawPeriod(uint64 thawSeconds);
    /// @notice A revoked key cannot be authorized again by signature (only by the payer's transaction).
    error SignerRevoked(address signer);

    /// @param aitToken the AIT token
    /// @param royalties the model registry
    /// @param treasury_ the DAO fund
    /// @param thawSeconds the thaw period
    constructor(IERC20 aitToken, IRoyalties royalties, address treasury_, uint64 thawSeconds)
        EIP712("AI Torrent Escrow", "1")
    {
        if (thawSeconds == 0 || thawSeconds > 365 days) revert BadThawPeriod(thawSeconds);
        token = aitToken;
        registry = royalties;
        treasury = treasury_;
        thawPeriod = thawSeconds;
    }

    // ---- deposits ---------------------------------------------------------------------------

    /// @notice Deposits `amount` (approved beforehand) into the caller's free balance.
    function deposit(uint256 amount) external nonReentrant {
        _deposit(msg.sender, amount);
    }

    /// @notice Deposits `amount` for `payer`, who signed an EIP-2612 permit for it: no approve
    /// transaction, and anyone (a relay) may submit it.
    function depositWithPermit(address payer, uint256 amount, uint256 deadline, uint8 v, bytes32 r, bytes32 s)
        external
        nonReentrant
    {
        // A permit someone already submitted fails; the allowance it set still counts, but only
        // the payer may spend it so, or anyone could lock a payer's spare allowance here.
        try IERC20Permit(address(token)).permit(payer, address(this), amount, deadline, v, r, s) {}
        catch {
            if (msg.sender != payer) revert BadSignature();
        }
        _deposit(payer, amount);
    }

    /// @notice Spends `amount` of the caller's earnings as a deposit, without a token transfer.
    function depositEarned(uint256 amount) external {
        uint256 have = earned[msg.sender];
        if (amount == 0 || amount > have) revert BadAmount(amount, have);
        earned[msg.sender] = have - amount;
        _free[msg.sender].balance += amount;
        emit EarnedDeposited(msg.sender, amount);
    }

    /// @notice Sends `amount` of the caller's earnings to the caller.
    function withdrawEarned(uint256 amount) external nonReentrant {
        uint256 have = earned[msg.sender];
        if (amount == 0 || amount > have) revert BadAmount(amount, have);
        earned[msg.sender] = have - amount;
        token.safeTransfer(msg.sender, amount);
        emit EarnedWithdrawn(msg.sender, amount);
    }

    // ---- allocations ------------------------------------------------------------------------

    /// @notice Moves `amount` of the caller's free balance (not thawing) to its allocation for `node`.
    function allocate(address node, uint256 amount) external {
        _allocate(msg.sender, node, amount);
    }

    /// @notice Applies an allocation the payer or one of its signers signed: allocates what
    /// `cumulativeAllocated` adds to all allocations to that node so far (nothing when it adds
    /// nothing, so a replay is harmless). Anyone may submit it; the node does before serving.
    function allocateBySig(Allocation calldata a, bytes calldata signature) external returns (uint256 added) {
        if (block.timestamp > a.deadline) revert Expired(a.deadline);
        bytes32 digest = _hashTypedDataV4(
            keccak256(abi.encode(ALLOCATION_TYPEHASH, a.payer, a.node, a.cumulativeAllocated, a.deadline))
        );
        // A key being revoked keeps what it signed redeemable, but moves no more money.
        address signer = ECDSA.recover(digest, signature);
        if (signer != a.payer && _signerUntil[a.payer][signer] != type(uint64).max) revert UnauthorizedSigner(signer);
        uint256 total = _allocatedTotal[a.payer][a.node];
        if (a.cumulativeAllocated <= total) return 0;
        added = a.cumulativeAllocated - total;
        _allocate(a.payer, a.node, added);
    }

    /// @notice Starts thawing `amount` of an account (`node` zero: the free balance), replacing an
    /// earlier thaw of it and starting its period again; zero cancels.
    function thaw(address node, uint256 amount) external {
        Account storage acc = _account(msg.sender, node);
        if (amount > acc.balance) revert BadAmount(amount, acc.balance);
        acc.thawing = amount;
        acc.thawEnd = amount == 0 ? 0 : uint64(block.timestamp) + thawPeriod;
        emit Thawing(msg.sender, node, amount, acc.thawEnd);
    }

    /// @notice Withdraws what thawed in an account (`node` zero: the free balance) to the caller.
    function withdraw(address node) external nonReentrant returns (uint256 amount) {
        Account storage acc = _account(msg.sender, node);
        if (acc.thawing == 0 || block.timestamp < acc.thawEnd) revert NotThawed(acc.thawEnd);
        // Redeems may have taken some of what was thawing.
        amount = acc.thawing < acc.balance ? acc.thawing : acc.balance;
        acc.balance -= amount;
        acc.thawing = 0;
        acc.thawEnd = 0;
        token.safeTransfer(msg.sender, amount);
        emit Withdrawn(msg.sender, node, amount);
    }

    // ---- signers ----------------------------------------------------------------------------

    /// @notice Lets `signer` (a session key) sign the caller's vouchers and allocations.
    function authorizeSigner(address signer) external {
        _authorize(msg.sender, signer);
    }

    /// @notice Applies a payer's EIP-712 `AuthorizeSigner`, so a node can submit it with its first
    /// redeem (use multicall) and the payer's wallet signs once, with no transaction.
    function authorizeSignerBySig(address payer, address signer, uint256 deadline, bytes calldata signature) external {
        if (block.timestamp > deadline) revert BadSignature();
        uint64 until = _signerUntil[payer][signer];
        // Already a signer: nothing to do (a node's multicall goes on to its redeem).
        if (until == type(uint64).max) return;
        if (until != 0) revert SignerRevoked(signer);
        bytes32 digest =
            _hashTypedDataV4(keccak256(abi.encode(AUTHORIZE_TYPEHASH, payer, signer, _useNonce(payer), deadline)));
        if (!SignatureChecker.isValidSignatureNow(payer, digest, signature)) revert BadSignature();
        _authorize(payer, signer);
    }

    /// @notice Starts revoking `signer`: what it signed stays redeemable for one thaw period.
    /// It also spends the caller's nonce, so an `AuthorizeSigner` it signed and nobody applied
    /// yet is void (revoking a key that was never authorized does just that).
    function revokeSigner(address signer) external {
        _useNonce(msg.sender);
        uint64 until = _signerUntil[msg.sender][signer];
        if (until == type(uint64).max) {
            until = uint64(block.timestamp) + thawPeriod;
        } else if (until == 0) {
            until = uint64(block.timestamp);
        }
        _signerUntil[msg.sender][signer] = until;
        emit SignerRevoking(msg.sender, signer, until);
    }

    /// @notice Whether `signer` may sign for `payer` now.
    function isSigner(address payer, address signer) public view returns (bool) {
        return signer == payer || block.timestamp < _signerUntil[payer][signer];
    }

    /// @notice Until when `signer` signs for `payer`: 0 if it never was authorized,
    /// `type(uint64).max` while it is and no revocation has started, else the end of its
    /// revocation (a node that takes new vouchers from a key being revoked may not redeem them).
    function signerUntil(address payer, address signer) external view returns (uint64) {
        return _signerUntil[payer][signer];
    }

    // ---- vouchers ---------------------------------------------------------------------------

    /// @notice Pays what `voucher` adds to what was collected for its (payer, session, node), in
    /// full or reverts; returns the amount paid.
    function redeem(Voucher calldata voucher, bytes calldata signature) external returns (uint256) {
        return _redeem(voucher, signature);
    }

    /// @notice Redeems several vouchers in one transaction. A voucher already collected (someone
    /// submitted it first) pays nothing and is skipped; any other failure reverts them all.
    function redeemBatch(Voucher[] calldata vouchers, bytes[] calldata signatures) external returns (uint256 paid) {
        if (vouchers.length != signatures.length) revert LengthMismatch();
        for (uint256 i = 0; i < vouchers.length; ++i) {
            Voucher calldata v = vouchers[i];
            if (v.cumulativeAmount <= _collected[_collectedKey(v.payer, v.session, v.node)]) continue;
            paid += _redeem(v, signatures[i]);
        }
    }

    /// @notice The EIP-712 digest a voucher's signer signs.
    function voucherDigest(Voucher calldata voucher) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    VOUCHER_TYPEHASH,
                    voucher.session,
                    voucher.payer,
                    voucher.node,
                    voucher.model,
                    voucher.cumulativeAmount,
                    voucher.cumulativeWork,
                    voucher.receipts,
                    voucher.expiry
                )
            )
        );
    }

    /// @notice What was collected to date for (`payer`, `session`, `node`).
    function collected(address payer, bytes32 session, address node) external view returns (uint256) {
        return _collected[_collectedKey(payer, session, node)];
    }

    /// @notice A payer's free balance, how much of it thaws, and when.
    function freeBalance(address payer) external view returns (uint256 balance, uint256 thawing, uint64 thawEnd) {
        Account storage acc = _free[payer];
        return (acc.balance, acc.thawing, acc.thawEnd);
    }

    /// @notice A payer's allocation to a node, how much of it thaws, and when. A node serves
    /// only against `available` (balance less what thaws) and redeems before `thawEnd`.
    function allocation(address payer, address node)
        external
        view
        returns (uint256 balance, uint256 thawing, uint64 thawEnd)
    {
        Account storage acc = _allocations[payer][node];
        return (acc.balance, acc.thawing, acc.thawEnd);
    }

    /// @notice Everything `payer` ever allocated to `node` (by transaction or signature): the
    /// base of the next signed `Allocation`'s `cumulativeAllocated`.
    function allocatedTotal(address payer, address node) external view returns (uint256) {
        return _allocatedTotal[payer][node];
    }

    /// @notice What backs new work for `node`: its allocation from `payer` less what thaws
    /// (a thaw that has run its period can be withdrawn at any moment).
    function available(address payer, address node) external view returns (uint256) {
        Account storage acc = _allocations[payer][node];
        return acc.balance - acc.thawing;
    }

    /// @notice Splits `amount` as a redeem for `model` would: node, creator and DAO shares.
    function split(bytes32 model, uint256 amount)
        public
        view
        returns (uint256 nodeShare, uint256 creatorShare, uint256 daoShare, address payout)
    {
        uint16 bps;
        (payout, bps) = registry.royaltyOf(model);
        nodeShare = amount * NODE_BPS / BPS;
        creatorShare = payout == address(0) ? 0 : amount * bps / BPS;
        daoShare = amount - nodeShare - creatorShare;
    }

    // ---- internals --------------------------------------------------------------------------

    function _redeem(Voucher calldata v, bytes calldata signature) private nonReentrant returns (uint256 amount) {
        if (block.timestamp > v.expiry) revert Expired(v.expiry);
        _checkSigner(v.payer, ECDSA.recover(voucherDigest(v), signature));
        bytes32 key = _collectedKey(v.payer, v.session, v.node);
        uint256 done = _collected[key];
        if (v.cumulativeAmount <= done) revert NothingToCollect(done, v.cumulativeAmount);
        amount = v.cumulativeAmount - done;
        Account storage acc = _allocations[v.payer][v.node];
        if (amount > acc.balance) revert InsufficientAllocation(amount, acc.balance);
        acc.balance -= amount;
        if (acc.thawing > acc.balance) acc.thawing = acc.balance;
        _collected[key] = v.cumulativeAmount;
        _pay(v, amount);
    }

    /// Credits the three shares of `amount`, paid by voucher `v`.
    function _pay(Voucher calldata v, uint256 amount) private {
        (uint256 nodeShare, uint256 creatorShare, uint256 daoShare, address payout) = split(v.model, amount);
        earned[v.node] += nodeShare;
        if (creatorShare > 0) earned[payout] += creatorShare;
        earned[treasury] += daoShare;
        emit Redeemed(
            v.payer,
            v.node,
            v.session,
            v.model,
            amount,
            v.cumulativeWork,
            v.receipts,
            nodeShare,
            creatorShare,
            daoShare
        );
    }

    function _deposit(address payer, uint256 amount) private {
        if (amount == 0) revert BadAmount(0, 0);
        _free[payer].balance += amount;
        token.safeTransferFrom(payer, address(this), amount);
        emit Deposited(payer, amount);
    }

    function _allocate(address payer, address node, uint256 amount) private {
        Account storage f = _free[payer];
        uint256 unfrozen = f.balance - f.thawing;
        if (amount == 0 || amount > unfrozen || node == address(0)) revert BadAmount(amount, unfrozen);
        f.balance -= amount;
        _allocations[payer][node].balance += amount;
        _allocatedTotal[payer][node] += amount;
        emit Allocated(payer, node, amount);
    }

    function _authorize(address payer, address signer) private {
        if (signer == address(0)) revert UnauthorizedSigner(signer);
        _signerUntil[payer][signer] = type(uint64).max;
        emit SignerAuthorized(payer, signer);
    }

    function _checkSigner(address payer, address signer) private view {
        if (!isSigner(payer, signer)) revert UnauthorizedSigner(signer);
    }

    function _account(address payer, address node) private view returns (Account storage) {
        return node == address(0) ? _free[payer] : _allocations[payer][node];
    }

    function _collectedKey(address payer, bytes32 session, address node) private pure returns (bytes32) {
        return keccak256(abi.encode(payer, session, node));
    }
}
