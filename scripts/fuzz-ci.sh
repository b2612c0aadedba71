#!/usr/bin/env bash
# Fuzz smoke for CI: builds every cargo-fuzz target in fuzz/ and runs each one for a short,
# bounded time on its committed seeds (fuzz/seeds/<target>/) plus whatever corpus earlier runs
# left in fuzz/corpus/<target>/. Exits non-zero if any target crashes, times out, runs out of
# memory or fails to build; the failing inputs are in fuzz/artifacts/<target>/.
#
#   scripts/fuzz-ci.sh                  # every target, 20 s each
#   FUZZ_SECONDS=300 scripts/fuzz-ci.sh pickle_decode request   # longer, chosen targets
#
# Environment:
#   FUZZ_SECONDS      seconds per target (default 20)
#   FUZZ_JOBS         parallel targets (default: number of CPUs, at most 4)
#   FUZZ_RSS_MB       libFuzzer -rss_limit_mb (default 2048)
#   CARGO_TARGET_DIR  where the instrumented build goes (default fuzz/target)
#   DISPYNODE_FUZZ_SKIP=expansion   skip the payload-expansion oracle (see fuzz/README.md)
#
# Toolchain: cargo-fuzz needs nightly-only flags (-Zsanitizer). With a rustup nightly
# toolchain installed it is used (`cargo +nightly fuzz`); otherwise the stable toolchain is
# used with RUSTC_BOOTSTRAP=1, which unlocks the same flags. cargo-fuzz itself is installed
# with `cargo install cargo-fuzz --locked` when missing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
SECS="${FUZZ_SECONDS:-20}"
RSS_MB="${FUZZ_RSS_MB:-2048}"
NCPU=$(nproc 2>/dev/null || echo 2)
JOBS="${FUZZ_JOBS:-$(( NCPU < 4 ? NCPU : 4 ))}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "::: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

CARGO=(cargo)
if command -v rustup >/dev/null 2>&1 && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    CARGO=(cargo +nightly)
else
    export RUSTC_BOOTSTRAP=1
fi
echo "::: toolchain: ${CARGO[*]} ($("${CARGO[@]}" --version))${RUSTC_BOOTSTRAP:+ with RUSTC_BOOTSTRAP=1}"

if [ $# -gt 0 ]; then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <(cd fuzz && "${CARGO[@]}" fuzz list)
fi
[ ${#TARGETS[@]} -gt 0 ] || { echo "no fuzz targets"; exit 1; }

echo "::: building ${#TARGETS[@]} targets (debug assertions and overflow checks on, ASan)"
(cd fuzz && "${CARGO[@]}" fuzz build)

LOGDIR="$ROOT/fuzz/artifacts/logs"
mkdir -p "$LOGDIR"

run_one() {
    local t=$1
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    # The first directory receives new inputs (ignored by git); the seeds are only read.
    # -timeout: one input taking more than 10 s is a finding (a hang).
    (cd fuzz && "${CARGO[@]}" fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$SECS" -timeout=10 -rss_limit_mb="$RSS_MB" \
        -print_final_stats=1) >"$LOGDIR/$t.log" 2>&1
}

echo "::: running each target for ${SECS}s, ${JOBS} at a time (logs in fuzz/artifacts/logs/)"
declare -A STATUS
pids=()
names=()
wait_some() {
    local i=$1
    if wait "${pids[$i]}"; then STATUS[${names[$i]}]=ok; else STATUS[${names[$i]}]=FAIL; fi
}
for t in "${TARGETS[@]}"; do
    run_one "$t" &
    pids+=($!)
    names+=("$t")
    if [ ${#pids[@]} -ge "$JOBS" ]; then
        wait_some 0
        pids=("${pids[@]:1}")
        names=("${names[@]:1}")
    fi
done
for i in "${!pids[@]}"; do wait_some "$i"; done

failed=0
printf '%-16s %-6s %12s %8s %8s\n' target result execs cov ft
for t in "${TARGETS[@]}"; do
    log="$LOGDIR/$t.log"
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || true)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || true)
    printf '%-16s %-6s %12s %8s %8s\n' "$t" "${STATUS[$t]}" "${execs:--}" "${cov:--}" "${ft:--}"
    if [ "${STATUS[$t]}" != ok ]; then
        failed=1
        echo "--- $t: last lines of fuzz/artifacts/logs/$t.log"
        grep -E 'panicked|ERROR|SUMMARY|Test unit written|Failing input' -A3 "$log" | head -30 || tail -30 "$log"
    fi
done
if [ "$failed" -ne 0 ]; then
    echo "::: fuzz smoke FAILED (inputs in fuzz/artifacts/<target>/)"
    exit 1
fi
echo "::: fuzz smoke ok"
