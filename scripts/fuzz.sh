#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (libFuzzer through cargo-fuzz) for SECONDS each, one after the
# other, in one process each (the machine has 2 vCPUs, shared).
#
#   scripts/fuzz.sh [SECONDS]          default 20; CI runs this
#   FUZZ_TARGETS="record lackey" scripts/fuzz.sh 600   only these targets
#   FUZZ_PROFILE=dev scripts/fuzz.sh 15                 unoptimised build (CI)
#
# Needs cargo-fuzz: `cargo install cargo-fuzz --locked` (CI installs it into .ci-tools/).
# Builds with the default stable toolchain (`-s none`: coverage instrumentation, no sanitizer;
# release mode with debug assertions and overflow checks). Each target starts from its committed
# seeds (fuzz/seeds/TARGET, written by `cargo run --manifest-path fuzz/Cargo.toml --example
# write_seeds`) and the corpus of earlier runs (fuzz/corpus/TARGET, not committed).
# Exits non-zero if any target finds a crash, a hang (-timeout) or an allocation above
# -malloc_limit_mb; the input is saved under fuzz/artifacts/TARGET/ and the command that replays
# it is printed. Prints one summary line per target: executions, seconds, corpus size, result.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-20}
[[ "$SECONDS_EACH" =~ ^[0-9]+$ ]] || { echo "usage: scripts/fuzz.sh [SECONDS per target]" >&2; exit 2; }

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed: run \`cargo install cargo-fuzz --locked\` (or put .ci-tools/bin on PATH)" >&2
    exit 2
fi

# FUZZ_PROFILE=dev builds without optimisation: measured from scratch 78 s against 224 s, but
# 10-30x fewer executions per second. CI uses it for its short run; long runs should not.
case "${FUZZ_PROFILE:-release}" in
    release) build_flags=(-O); bin_dir=fuzz/target/x86_64-unknown-linux-gnu/release ;;
    dev) build_flags=(--dev); bin_dir=fuzz/target/x86_64-unknown-linux-gnu/debug ;;
    *) echo "FUZZ_PROFILE must be release or dev" >&2; exit 2 ;;
esac
echo "building the fuzz targets (cargo fuzz build -s none ${build_flags[*]})"
cargo fuzz build -s none "${build_flags[@]}"
targets=${FUZZ_TARGETS:-$(cargo fuzz list)}

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
failed=()
printf '%-15s %12s %8s %8s  %s\n' target executions seconds corpus result
for t in $targets; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    seeds=()
    [[ -d "fuzz/seeds/$t" ]] && seeds=("fuzz/seeds/$t")
    start=$SECONDS
    rc=0
    # -timeout: one input taking 10 s is a hang; -malloc_limit_mb: one allocation of 512 MiB
    # from an input of at most a few tens of KiB is a length field trusted too far.
    "$bin_dir/$t" "fuzz/corpus/$t" "${seeds[@]}" \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 \
        -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 >"$logs/$t.log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -1)
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    if [[ $rc -eq 0 ]]; then
        result=ok
    else
        result="FAILED (exit $rc)"
        failed+=("$t")
    fi
    printf '%-15s %12s %8s %8s  %s\n' "$t" "${execs:-?}" "$((SECONDS - start))" "$corpus" "$result"
    if [[ $rc -ne 0 ]]; then
        echo "---- $t: last lines of libFuzzer's output"
        grep -v '^#[0-9]' "$logs/$t.log" | tail -40
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$logs/$t.log" | tail -1)
        if [[ -n "$artifact" ]]; then
            echo "---- replay: cargo fuzz run -s none $t $artifact"
        fi
    fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzzing found problems in: ${failed[*]}" >&2
    exit 1
fi
echo "fuzzing: every target ran ${SECONDS_EACH}s without a crash"
