#!/usr/bin/env bash
# Fuzzes every target (or those named) for a fixed time each and prints, per target, the
# executions, coverage (libFuzzer's cov and ft) and the crashes, hangs and out-of-memory
# inputs it found (saved under fuzz/artifacts/<target>/).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      default: 1200 s (20 minutes) for every target
#
# Environment:
#   AIT_FUZZ_SANITIZER   none (default) or address: ASan is slower to build and to run; the
#                        targets are safe Rust, so coverage-guided search finds panics, hangs
#                        and OOMs without it.
#   AIT_FUZZ_MERGE=1     afterwards, merge what each run found into fuzz/corpus/<target>,
#                        keeping only inputs that add coverage (libFuzzer -merge=1).
#   AIT_FUZZ_JOBS        cargo build jobs (default 1, to leave a core to others).
#
# Needs the nightly toolchain and cargo-fuzz (`rustup toolchain install nightly`,
# `cargo install cargo-fuzz --locked`). The saved corpora are replayed on stable as ordinary
# tests: `cargo test --release -p ait-fuzz-targets`.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-1200}
shift || true
ALL=(frame protocol record report session gguf safetensors parts tokenizer chat api)
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL[@]}")
SAN=${AIT_FUZZ_SANITIZER:-none}

# Longest input libFuzzer makes up, per target (model files and tokenizers need room).
max_len() {
    case $1 in
        gguf | tokenizer | parts | safetensors) echo 2097152 ;;
        session | frame) echo 65536 ;;
        *) echo 16384 ;;
    esac
}

echo "building (sanitizer: $SAN) ..."
(cd fuzz && CARGO_BUILD_JOBS=${AIT_FUZZ_JOBS:-1} cargo +nightly fuzz build -O -a -s "$SAN" --features api)
BIN=fuzz/target/x86_64-unknown-linux-gnu/release
WORK=fuzz/target/work
mkdir -p "$WORK"

printf '%-12s %12s %8s %8s %7s %6s %5s  %s\n' target execs cov ft crashes hangs ooms artifacts
for t in "${TARGETS[@]}"; do
    art=fuzz/artifacts/$t
    mkdir -p "$art" "$WORK/$t"
    log=$WORK/$t.log
    # Only what this run finds is counted (the artifacts folder keeps earlier runs' finds).
    since=$WORK/$t.started
    touch "$since"
    # New inputs go to the work dir; the saved corpus is read only.
    "$BIN/$t" "$WORK/$t" "fuzz/corpus/$t" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 \
        -malloc_limit_mb=2048 -max_len="$(max_len "$t")" -print_final_stats=1 -artifact_prefix="$art/" \
        -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 -fork=1 >"$log" 2>&1 || true
    # Fork mode's status lines: `#EXECS: cov: N ft: N corp: N exec/s N oom/timeout/crash: ...`.
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    execs=$(grep -oE '^#[0-9]+' <<<"$last" | tr -d '#')
    cov=$(grep -o 'cov: [0-9]*' <<<"$last" | awk '{print $2}')
    ft=$(grep -o 'ft: [0-9]*' <<<"$last" | awk '{print $2}')
    crashes=$(find "$art" -name 'crash-*' -newer "$since" | wc -l)
    hangs=$(find "$art" -name 'timeout-*' -newer "$since" | wc -l)
    ooms=$(find "$art" -name 'oom-*' -newer "$since" | wc -l)
    printf '%-12s %12s %8s %8s %7s %6s %5s  %s\n' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$crashes" "$hangs" "$ooms" "$art"
    if [ "${AIT_FUZZ_MERGE:-0}" = 1 ]; then
        merged=$WORK/$t.merged
        rm -rf "$merged" && mkdir -p "$merged"
        "$BIN/$t" -merge=1 -timeout=10 -rss_limit_mb=2048 "$merged" "fuzz/corpus/$t" "$WORK/$t" >>"$log" 2>&1
        rm -rf "fuzz/corpus/$t" && mv "$merged" "fuzz/corpus/$t"
    fi
done
echo "logs: $WORK/<target>.log"
