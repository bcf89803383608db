#!/usr/bin/env bash
# Checks that `cargo run -p relay` (the README's first command) and the test command's
# workspace build (`cargo test --workspace --exclude app`) resolve every shared dependency with
# the same features, so that whichever runs second reuses the other's build. Prints the crates
# whose features differ and exits 1 if any do. Fix a difference with a feature pin in
# relay/Cargo.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
# One line per crate (name, version, features). Each crate's subtree is printed once, its later
# appearances marked "(*)": the set of lines is the same as with --no-dedupe, whose two
# million lines took a minute.
features() { # cargo tree arguments...
    cargo tree "$@" -f '{p} {f}' --prefix none 2>/dev/null | sed 's/ (\/[^)]*)//; s/ (\*)$//' | sort -u
}
relay=$(features -p relay --edges normal,build)
workspace=$(features --workspace --exclude app --edges normal,build,dev)
# Crates in relay's graph whose line (name, version, features) is not in the workspace's.
differ=$(comm -23 <(echo "$relay") <(echo "$workspace"))
if [ -n "$differ" ]; then
    echo "features differ between \`cargo run -p relay\` and the test build:"
    while read -r name version _; do
        echo "  $name $version"
        echo "    relay:     $(grep "^$name $version " <<<"$relay" | cut -d' ' -f3-)"
        echo "    workspace: $(grep "^$name $version " <<<"$workspace" | cut -d' ' -f3-)"
    done <<<"$differ"
    exit 1
fi
echo "cargo run -p relay and the test build share one feature set ($(wc -l <<<"$relay") crates)"
