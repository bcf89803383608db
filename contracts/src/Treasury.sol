// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

/// @notice What the treasury needs of the escrow: its earned share.
interface IEarnings {
    /// @notice AIT credited to `who` and not yet withdrawn.
    function earned(address who) external view returns (uint256);
    /// @notice Sends `amount` of the caller's earnings to the caller.
    function withdrawEarned(uint256 amount) external;
}

/// @title The DAO fund
/// @notice Receives the DAO's 10% of every redeemed payment (collected from the escrow) and
/// every slashed stake, and pays free-tier subsidies and grants. For now an owner decides
/// payments (a multisig in production): with the supply still in a few hands, a token vote
/// would be a vote of those hands. The owner can hand the fund to an OpenZeppelin Governor's
/// TimelockController with transferOwnership, without a new contract.
contract Treasury is Ownable2Step, ReentrancyGuard {
    using SafeERC20 for IERC20;

    /// @notice The AIT token.
    IERC20 public immutable token;

    /// @notice The fund paid `amount` to `to`.
    event Paid(address indexed to, uint256 amount, string memo);
    /// @notice The fund collected its share from the escrow.
    event Collected(address indexed escrow, uint256 amount);

    /// @param aitToken the AIT token
    /// @param owner_ who approves payments
    constructor(IERC20 aitToken, address owner_) Ownable(owner_) {
        token = aitToken;
    }

    /// @notice Pulls the fund's earned share out of `escrow`; anyone may call it. The event
    /// reports what the fund's balance grew by, so a contract posing as an escrow cannot
    /// fake a collection.
    function collect(IEarnings escrow) external nonReentrant returns (uint256 amount) {
        uint256 owed = escrow.earned(address(this));
        if (owed == 0) return 0;
        uint256 before = token.balanceOf(address(this));
        escrow.withdrawEarned(owed);
        amount = token.balanceOf(address(this)) - before;
        emit Collected(address(escrow), amount);
    }

    /// @notice Pays a subsidy or grant.
    function pay(address to, uint256 amount, string calldata memo) external onlyOwner nonReentrant {
        token.safeTransfer(to, amount);
        emit Paid(to, amount, memo);
    }
}
