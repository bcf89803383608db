#!/usr/bin/env bash
# The settlement contracts: installs their pinned npm packages (solc 0.8.37, OpenZeppelin 5.7,
# anvil 1.7.1; `npm ci` from contracts/package-lock.json, skipped when they are in place), then
# recompiles contracts/src with solcjs and fails if the committed artifacts, which the Rust
# build loads, differ from what the sources compile to.
set -euo pipefail
cd "$(dirname "$0")/../contracts"
if ! npm ls --silent >/dev/null 2>&1 || [ ! -d node_modules/@foundry-rs ]; then
    npm ci --no-audit --no-fund
fi
node compile.mjs --check
echo "contracts: artifacts match the sources"
