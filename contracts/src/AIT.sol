// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

/// @title AIT, the AI Torrent utility token
/// @notice A plain ERC-20 with EIP-2612 permit, so that a deposit into the escrow or a stake
/// needs one signature instead of a separate approve transaction. The whole supply is minted
/// once, to the deployer, who hands it out (on a dev chain: to the test accounts); there is no
/// mint afterwards, so nobody can dilute what nodes earned.
contract AIT is ERC20, ERC20Permit {
    /// @param holder receives the whole supply
    /// @param supply in the smallest unit (18 decimals)
    constructor(address holder, uint256 supply) ERC20("AI Torrent", "AIT") ERC20Permit("AI Torrent") {
        _mint(holder, supply);
    }
}
