// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

/// @notice What the tribunal needs of `Staking`.
interface IStakes {
    /// @notice `node`'s bonded stake, unbonding amount and when that unbonds.
    function stakeOf(address node) external view returns (uint256 staked, uint256 unbonding, uint64 unbondEnd);
    /// @notice The libp2p peer id `node` bound.
    function peerIdOf(address node) external view returns (bytes memory);
    /// @notice Takes up to `amount` of `node`'s stake to the DAO fund.
    function slash(address node, uint256 amount, bytes32 evidence) external returns (uint256 taken);
    /// @notice Seconds between `unbond` and `withdraw`.
    function unbondingPeriod() external view returns (uint64);
    /// @notice Locks `node`'s stake once more.
    function lock(address node) external;
    /// @notice Lifts one of `node`'s locks.
    function unlock(address node) external;
}

/// @title Slashing by verdict, with an appeal to a drawn jury
/// @notice Holds `Staking`'s ARBITER_ROLE. A fraud report (see docs/ARCHITECTURE.md, "Fraud
/// reports") is checked off chain by recomputing it; the nodes that recomputed it and found the
/// accused faulty ("judges", staked, two or three, of other addresses than the accused) sign an
/// EIP-712 `Verdict` naming the report's id, the accused's address and the peer id that address
/// bound in `Staking`. Anyone submits the signatures with `accuse`. A case is one report
/// against one address (another address bound to the same peer id is another case), and
/// needs the accused to hold `slashAmount` staked or unbonding. While it is open the accused's
/// and the judges' stakes are locked, and each judge needs `judgePenalty` bonded for every
/// case it has open. The accused may `appeal` within `appealWindow`: a jury of `JURY` nodes
/// that enlisted before the appeal (enlisting locks a node's stake until it resigns), staked,
/// other than the judges and the accused, is then drawn from the hash of the block after the
/// appeal, which neither side chooses and which must be used within 256 blocks; each juror
/// `vote`s from its own address (or `abstain`s, when it cannot recompute the report), and
/// the first `JURY_MAJORITY` matching votes decide. An appeal puts up `appealBond` of the
/// accused's stake, which is locked already: the accused needs `slashAmount + appealBond`
/// staked or unbonding to appeal, and a jury that confirms the verdict slashes both. A node
/// found faulty (unappealed after the window, or by the jury) loses `slashAmount` of its
/// stake to the DAO fund; a judge the jury overturns loses `judgePenalty`, so two staked
/// sybils cannot slash an honest rival. Judges and the jurors whose votes made the majority
/// are paid a fixed `bounty` from this contract's own balance (which the DAO funds), never a
/// share of a slash. A jury that reaches no majority in `juryWindow` dismisses the case, and
/// each drawn juror that neither voted nor abstained loses `jurorPenalty`; the accused is not
/// slashed.
contract Tribunal is EIP712, ReentrancyGuard {
    using SafeERC20 for IERC20;

    /// @notice Fewest judges an accusation needs.
    uint256 public constant QUORUM = 2;
    /// @notice Most judges an accusation may name.
    uint256 public constant MAX_JUDGES = 3;
    /// @notice Jurors drawn on appeal.
    uint256 public constant JURY = 5;
    /// @notice Jurors who must agree for a ruling.
    uint256 public constant JURY_MAJORITY = 3;
    /// @notice Draws tried per juror before the pool counts as too small.
    uint256 private constant DRAW_TRIES = 8;

    bytes32 private constant VERDICT_TYPEHASH =
        keccak256("Verdict(bytes32 report,address accused,bytes accusedPeer,bool faulty)");

    /// @notice Where a case stands.
    enum Stage {
        None,
        Accused,
        Appealed,
        Drawn,
        Closed
    }

    /// @notice How a case ended.
    enum Outcome {
        Open,
        Slashed,
        Overturned,
        Dismissed
    }

    /// @notice One fraud report's case against one address.
    struct Case {
        Stage stage;
        Outcome outcome;
        address accused;
        /// keccak256 of the peer id the accused bound when accused.
        bytes32 peerHash;
        /// The end of the appeal window, then of the jury's.
        uint64 deadline;
        /// The block whose hash draws the jury.
        uint64 seedBlock;
        /// Entries of the pool when the case was appealed: the draw's index space.
        uint64 poolLen;
        /// Jurors' faulty votes so far.
        uint8 faultyVotes;
        /// Jurors' cleared votes so far.
        uint8 clearedVotes;
        /// The part of the accused's stake its appeal puts up.
        uint256 bond;
        address[] judges;
        address[] jury;
    }

    /// @notice Node identities and stakes.
    IStakes public immutable staking;
    /// @notice The AIT token (bounties are paid in it).
    IERC20 public immutable token;
    /// @notice Bonded stake a judge or juror needs.
    uint256 public immutable minStake;
    /// @notice Taken from a node found faulty.
    uint256 public immutable slashAmount;
    /// @notice Taken from each judge a jury overturns.
    uint256 public immutable judgePenalty;
    /// @notice Paid to each judge or juror on the winning side.
    uint256 public immutable bounty;
    /// @notice Seconds the accused has to appeal.
    uint64 public immutable appealWindow;
    /// @notice Seconds a jury has to be drawn, and then to rule.
    uint64 public immutable juryWindow;
    /// @notice Stake an appeal puts up: slashed too when the jury confirms the verdict.
    uint256 public immutable appealBond;
    /// @notice Taken from each drawn juror that neither voted nor abstained by the deadline.
    uint256 public immutable jurorPenalty;

    mapping(bytes32 caseId => Case) private _cases;
    /// Every enlisting, in order; entries are never moved or removed, so an appealed case's
    /// draw reads the pool as it was at the appeal.
    address[] private _pool;
    mapping(address node => bool) private _enlisted;
    mapping(address node => uint256 blockNumber) private _enlistedAt;
    /// The block a node resigned in (0: it has not, or it was released).
    mapping(address node => uint256 blockNumber) private _resignedAt;
    mapping(address judge => uint256 count) private _openCases;
    /// Each juror's vote on a case: 0 none yet, 1 faulty, 2 cleared, 3 abstained.
    mapping(bytes32 caseId => mapping(address juror => uint8 vote)) private _votes;

    /// @notice `judges` accused `accused` of the fraud in `report`; it may appeal until `deadline`.
    event Accused(bytes32 indexed report, address indexed accused, address[] judges, uint64 deadline);
    /// @notice The accused appealed; the hash of block `seedBlock` draws the jury.
    event Appealed(bytes32 indexed report, address indexed accused, uint64 seedBlock);
    /// @notice The jury was drawn; it may rule until `deadline`.
    event JuryDrawn(bytes32 indexed report, address indexed accused, address[] jury, uint64 deadline);
    /// @notice `juror` voted on the case.
    event Voted(bytes32 indexed report, address indexed accused, address juror, bool faulty);
    /// @notice `juror` could not recompute the case's report.
    event Abstained(bytes32 indexed report, address indexed accused, address juror);
    /// @notice The case closed.
    event Closed(bytes32 indexed report, address indexed accused, Outcome outcome);
    /// @notice `node` may now be drawn for juries.
    event Enlisted(address indexed node);
    /// @notice `node` is not drawn for cases appealed from now on.
    event Resigned(address indexed node);
    /// @notice `node`'s enlisting lock is lifted.
    event Released(address indexed node);

    /// @notice A case for this report against this address exists already.
    error CaseExists(bytes32 report, address accused);
    /// @notice The accused holds less than `slashAmount` staked and unbonding (to appeal,
    /// `slashAmount + appealBond`).
    error AccusedUnstaked(address accused);
    /// @notice The seed block's hash is gone (more than 256 blocks ago): no jury can be drawn.
    error SeedExpired(uint64 seedBlock);
    /// @notice Not enlisted, or resigned and not yet released.
    error NotEnlisted(address node);
    /// @notice Resigned too recently: a draw may still pick it until `releaseBlock`.
    error NotReleased(uint256 releaseBlock);
    /// @notice Resigned and not yet released: release first.
    error StillResigning(address node);
    /// @notice The case is not at the stage this needs.
    error WrongStage(Stage stage);
    /// @notice Too few or too many signatures, or lists of different lengths.
    error Quorum(uint256 given, uint256 needed);
    /// @notice The accused bound no peer id, or another.
    error NotBound(address accused);
    /// @notice A signature that is not this signer's verdict, or a signer who may not sign here.
    error BadSigner(address signer);
    /// @notice A signer without `minStake` bonded.
    error NotStaked(address signer);
    /// @notice Before the deadline.
    error TooEarly(uint64 deadline);
    /// @notice After the deadline.
    error TooLate(uint64 deadline);
    /// @notice Not enough eligible enlisted nodes for a jury.
    error PoolTooSmall();
    /// @notice Not a juror of this case, or it voted already.
    error NotJuror(address node);
    /// @notice A setting that leaves a slashed node time to leave, or a zero window.
    error BadSettings();

    /// @param staking_ node stakes (this contract needs its ARBITER_ROLE)
    /// @param token_ the AIT token
    /// @param minStake_ bonded stake a judge or juror needs
    /// @param slashAmount_ taken from a faulty node
    /// @param judgePenalty_ taken from an overturned judge
    /// @param bounty_ paid to each judge or juror on the winning side
    /// @param appealWindow_ seconds to appeal
    /// @param juryWindow_ seconds to draw a jury, and then to rule
    /// @param appealBond_ stake an appeal puts up (slashed if the jury confirms the verdict)
    /// @param jurorPenalty_ taken from a drawn juror that did not vote in time
    constructor(
        IStakes staking_,
        IERC20 token_,
        uint256 minStake_,
        uint256 slashAmount_,
        uint256 judgePenalty_,
        uint256 bounty_,
        uint64 appealWindow_,
        uint64 juryWindow_,
        uint256 appealBond_,
        uint256 jurorPenalty_
    ) EIP712("AI Torrent Tribunal", "1") {
        // Stake unbonding when a case opens must still be there when it closes.
        // Locks keep the stakes of an open case in place; the windows still stay under the
        // unbonding period, so stake unbonding when a case opens cannot have left before.
        if (
            appealWindow_ == 0 || juryWindow_ == 0 || minStake_ == 0 || slashAmount_ == 0
                || uint256(appealWindow_) + 2 * uint256(juryWindow_) >= staking_.unbondingPeriod()
        ) revert BadSettings();
        staking = staking_;
        token = token_;
        minStake = minStake_;
        slashAmount = slashAmount_;
        judgePenalty = judgePenalty_;
        bounty = bounty_;
        appealWindow = appealWindow_;
        juryWindow = juryWindow_;
        appealBond = appealBond_;
        jurorPenalty = jurorPenalty_;
    }

    /// @notice The EIP-712 digest a judge signs.
    function verdictDigest(bytes32 report, address accused, bytes32 peerHash, bool faulty)
        public
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(keccak256(abi.encode(VERDICT_TYPEHASH, report, accused, peerHash, faulty)));
    }

    /// @notice Opens the case of `report` against `accused` (whose bound peer id is
    /// `accusedPeer`) with the faulty verdicts `sigs` of `judges`.
    function accuse(
        bytes32 report,
        address accused,
        bytes calldata accusedPeer,
        address[] calldata judges,
        bytes[] calldata sigs
    ) external {
        Case storage c = _cases[caseId(report, accused)];
        if (c.stage != Stage.None) revert CaseExists(report, accused);
        if (judges.length != sigs.length || judges.length < QUORUM || judges.length > MAX_JUDGES) {
            revert Quorum(judges.length, QUORUM);
        }
        bytes32 peerHash = keccak256(accusedPeer);
        if (accusedPeer.length == 0 || keccak256(staking.peerIdOf(accused)) != peerHash) revert NotBound(accused);
        (uint256 staked, uint256 unbonding,) = staking.stakeOf(accused);
        if (staked + unbonding < slashAmount) revert AccusedUnstaked(accused);
        bytes32 digest = verdictDigest(report, accused, peerHash, true);
        for (uint256 i = 0; i < judges.length; i++) {
            address judge = judges[i];
            if (judge == accused) revert BadSigner(judge);
            for (uint256 k = 0; k < i; k++) {
                if (judges[k] == judge) revert BadSigner(judge);
            }
            if (!SignatureChecker.isValidSignatureNow(judge, digest, sigs[i])) revert BadSigner(judge);
            // Bonded enough to judge, and to answer for this case besides those it has open.
            (uint256 bonded,,) = staking.stakeOf(judge);
            if (bonded < minStake || bonded < judgePenalty * (_openCases[judge] + 1)) revert NotStaked(judge);
        }
        staking.lock(accused);
        for (uint256 i = 0; i < judges.length; i++) {
            _openCases[judges[i]] += 1;
            staking.lock(judges[i]);
        }
        c.stage = Stage.Accused;
        c.accused = accused;
        c.peerHash = peerHash;
        c.deadline = uint64(block.timestamp) + appealWindow;
        c.judges = judges;
        emit Accused(report, accused, judges, c.deadline);
    }

    /// @notice The accused (the caller) demands a jury for its case of `report` (within the
    /// appeal window), putting up `appealBond` of its stake besides the slash.
    function appeal(bytes32 report) external {
        Case storage c = _cases[caseId(report, msg.sender)];
        if (c.stage != Stage.Accused) revert WrongStage(c.stage);
        if (block.timestamp >= c.deadline) revert TooLate(c.deadline);
        (uint256 staked, uint256 unbonding,) = staking.stakeOf(msg.sender);
        if (staked + unbonding < slashAmount + appealBond) revert AccusedUnstaked(msg.sender);
        c.bond = appealBond;
        c.stage = Stage.Appealed;
        c.seedBlock = uint64(block.number + 1);
        c.poolLen = uint64(_pool.length);
        c.deadline = uint64(block.timestamp) + juryWindow;
        emit Appealed(report, msg.sender, c.seedBlock);
    }

    /// @notice Makes the caller eligible for the juries of cases appealed from the next block
    /// on (while it keeps `minStake` bonded); its stake is locked until it resigns and is
    /// released.
    function enlist() external {
        if (!_staked(msg.sender)) revert NotStaked(msg.sender);
        if (_enlisted[msg.sender]) return;
        if (_resignedAt[msg.sender] != 0) revert StillResigning(msg.sender);
        _enlisted[msg.sender] = true;
        _pool.push(msg.sender);
        _enlistedAt[msg.sender] = block.number;
        staking.lock(msg.sender);
        emit Enlisted(msg.sender);
    }

    /// @notice Stops the caller being drawn for cases appealed from the next block on. Its
    /// stake stays locked while a draw may still pick it (`release`).
    function resign() external {
        if (!_enlisted[msg.sender]) revert NotEnlisted(msg.sender);
        _enlisted[msg.sender] = false;
        _resignedAt[msg.sender] = block.number;
        emit Resigned(msg.sender);
    }

    /// @notice Lifts a resigned node's enlisting lock, once no draw can pick it any more (a
    /// draw uses a seed block at most 256 blocks old, from before the resignation).
    function release() external {
        uint256 resigned = _resignedAt[msg.sender];
        if (resigned == 0) revert NotEnlisted(msg.sender);
        if (block.number <= resigned + 257) revert NotReleased(resigned + 258);
        _resignedAt[msg.sender] = 0;
        staking.unlock(msg.sender);
        emit Released(msg.sender);
    }

    /// @notice Draws the jury of an appealed case from the hash of its seed block; anyone may
    /// call it once that block exists and for 256 blocks after (then the hash is gone, and the
    /// case is dismissed when its window ends: nobody gets a second roll).
    function draw(bytes32 report, address accused) external {
        Case storage c = _cases[caseId(report, accused)];
        if (c.stage != Stage.Appealed) revert WrongStage(c.stage);
        if (block.timestamp >= c.deadline) revert TooLate(c.deadline);
        if (block.number <= c.seedBlock) revert TooEarly(c.seedBlock);
        bytes32 hash = blockhash(c.seedBlock);
        if (hash == bytes32(0)) revert SeedExpired(c.seedBlock);
        bytes32 seed = keccak256(abi.encode(hash, report));
        uint256 n = c.poolLen;
        address[] memory jury = new address[](JURY);
        uint256 drawn = 0;
        for (uint256 t = 0; t < JURY * DRAW_TRIES && drawn < JURY && n > 0; t++) {
            address node = _pool[uint256(keccak256(abi.encode(seed, t))) % n];
            if (_eligible(c, node, jury, drawn)) jury[drawn++] = node;
        }
        // Entries of resigned nodes can make random tries miss: then walk the pool in order
        // from a point the seed picks, so a jury that exists is found.
        uint256 from = n > 0 ? uint256(seed) % n : 0;
        for (uint256 i = 0; i < n && drawn < JURY; i++) {
            address node = _pool[(from + i) % n];
            if (_eligible(c, node, jury, drawn)) jury[drawn++] = node;
        }
        if (drawn < JURY) revert PoolTooSmall();
        for (uint256 i = 0; i < JURY; i++) {
            staking.lock(jury[i]);
        }
        c.jury = jury;
        c.stage = Stage.Drawn;
        c.deadline = uint64(block.timestamp) + juryWindow;
        emit JuryDrawn(report, accused, jury, c.deadline);
    }

    /// @notice The caller, a juror of the case of `report` against `accused`, votes whether the
    /// accused is `faulty` (once, before the jury's deadline); the first `JURY_MAJORITY`
    /// matching votes rule, and the jurors who cast them are paid.
    function vote(bytes32 report, address accused, bool faulty) external nonReentrant {
        bytes32 id = caseId(report, accused);
        Case storage c = _cases[id];
        if (c.stage != Stage.Drawn) revert WrongStage(c.stage);
        if (block.timestamp >= c.deadline) revert TooLate(c.deadline);
        if (!_isJuror(c, msg.sender) || _votes[id][msg.sender] != 0) revert NotJuror(msg.sender);
        uint8 side = faulty ? 1 : 2;
        _votes[id][msg.sender] = side;
        uint8 votes = faulty ? ++c.faultyVotes : ++c.clearedVotes;
        emit Voted(report, accused, msg.sender, faulty);
        if (votes < JURY_MAJORITY) return;
        _close(c);
        if (faulty) {
            c.outcome = Outcome.Slashed;
            if (_slash(c.accused, slashAmount + c.bond, report) > 0) _payAll(c.judges);
        } else {
            c.outcome = Outcome.Overturned;
            for (uint256 i = 0; i < c.judges.length; i++) {
                _slash(c.judges[i], judgePenalty, report);
            }
        }
        address[] memory majority = new address[](JURY_MAJORITY);
        uint256 n = 0;
        for (uint256 i = 0; i < c.jury.length; i++) {
            if (_votes[id][c.jury[i]] == side) majority[n++] = c.jury[i];
        }
        _payAll(majority);
        emit Closed(report, c.accused, c.outcome);
    }

    /// @notice The caller, a juror of the case, says it cannot recompute the report (another
    /// model, no server of its layers): it showed up, and its vote counts for neither side.
    function abstain(bytes32 report, address accused) external {
        bytes32 id = caseId(report, accused);
        Case storage c = _cases[id];
        if (c.stage != Stage.Drawn) revert WrongStage(c.stage);
        if (block.timestamp >= c.deadline) revert TooLate(c.deadline);
        if (!_isJuror(c, msg.sender) || _votes[id][msg.sender] != 0) revert NotJuror(msg.sender);
        _votes[id][msg.sender] = 3;
        emit Abstained(report, accused, msg.sender);
    }

    /// @notice Closes a case whose time ran out: unappealed, the accused is slashed and the
    /// judges paid; appealed without a ruling, it is dismissed, and each drawn juror that
    /// neither voted nor abstained loses `jurorPenalty` (as far as this contract may still
    /// slash: a revoked role does not keep the case open).
    function execute(bytes32 report, address accused) external nonReentrant {
        Case storage c = _cases[caseId(report, accused)];
        if (c.stage == Stage.None || c.stage == Stage.Closed) revert WrongStage(c.stage);
        if (block.timestamp < c.deadline) revert TooEarly(c.deadline);
        bool appealed = c.stage != Stage.Accused;
        bool drawn = c.stage == Stage.Drawn;
        _close(c);
        if (!appealed) {
            c.outcome = Outcome.Slashed;
            if (_slash(c.accused, slashAmount, report) > 0) _payAll(c.judges);
        } else {
            c.outcome = Outcome.Dismissed;
            if (drawn) {
                bytes32 id = caseId(report, accused);
                for (uint256 i = 0; i < c.jury.length; i++) {
                    if (_votes[id][c.jury[i]] != 0) continue;
                    _slash(c.jury[i], jurorPenalty, report);
                }
            }
        }
        emit Closed(report, c.accused, c.outcome);
    }

    /// @notice The key of the case of `report` against `accused`.
    function caseId(bytes32 report, address accused) public pure returns (bytes32) {
        return keccak256(abi.encode(report, accused));
    }

    /// @notice A case's stage, outcome and deadline.
    function caseOf(bytes32 report, address accused)
        external
        view
        returns (Stage stage, Outcome outcome, uint64 deadline)
    {
        Case storage c = _cases[caseId(report, accused)];
        return (c.stage, c.outcome, c.deadline);
    }

    /// @notice A case's judges and (once drawn) jury.
    function partiesOf(bytes32 report, address accused)
        external
        view
        returns (address[] memory judges, address[] memory jury)
    {
        Case storage c = _cases[caseId(report, accused)];
        return (c.judges, c.jury);
    }

    /// @notice `juror`'s vote on a case: 0 none, 1 faulty, 2 cleared, 3 abstained.
    function voteOf(bytes32 report, address accused, address juror) external view returns (uint8) {
        return _votes[caseId(report, accused)][juror];
    }

    /// @notice How many cases `judge` judges that are still open.
    function openCasesOf(address judge) external view returns (uint256) {
        return _openCases[judge];
    }

    /// @notice How many enlistings the pool holds (resigned nodes' included).
    function poolSize() external view returns (uint256) {
        return _pool.length;
    }

    /// Closes `c`: its stakes are unlocked and its judges' open cases counted down.
    function _close(Case storage c) private {
        Stage was = c.stage;
        c.stage = Stage.Closed;
        staking.unlock(c.accused);
        for (uint256 i = 0; i < c.judges.length; i++) {
            _openCases[c.judges[i]] -= 1;
            staking.unlock(c.judges[i]);
        }
        if (was == Stage.Drawn) {
            for (uint256 i = 0; i < c.jury.length; i++) {
                staking.unlock(c.jury[i]);
            }
        }
    }

    /// Slashes `node` by up to `amount` as far as this contract still may: a revoked role
    /// takes nothing, and the case closes all the same.
    function _slash(address node, uint256 amount, bytes32 report) private returns (uint256) {
        try staking.slash(node, amount, report) returns (uint256 taken) {
            return taken;
        } catch {
            return 0;
        }
    }

    function _staked(address node) private view returns (bool) {
        (uint256 staked,,) = staking.stakeOf(node);
        return staked >= minStake;
    }

    function _eligible(Case storage c, address node, address[] memory jury, uint256 drawn)
        private
        view
        returns (bool)
    {
        if (node == c.accused || _enlistedAt[node] >= c.seedBlock - 1) return false;
        // Enlisted when the case was appealed: still enlisted, or resigned after it.
        uint256 resigned = _resignedAt[node];
        if (!_enlisted[node] && (resigned == 0 || resigned < c.seedBlock - 1)) return false;
        for (uint256 i = 0; i < c.judges.length; i++) {
            if (c.judges[i] == node) return false;
        }
        for (uint256 i = 0; i < drawn; i++) {
            if (jury[i] == node) return false;
        }
        return _staked(node);
    }

    function _isJuror(Case storage c, address node) private view returns (bool) {
        for (uint256 i = 0; i < c.jury.length; i++) {
            if (c.jury[i] == node) return true;
        }
        return false;
    }

    /// Pays each of `to` the bounty, as far as this contract's balance goes.
    function _payAll(address[] memory to) private {
        for (uint256 i = 0; i < to.length; i++) {
            uint256 left = token.balanceOf(address(this));
            uint256 amount = bounty < left ? bounty : left;
            if (amount > 0) token.safeTransfer(to[i], amount);
        }
    }
}
