#!/bin/sh
# One command for the side-by-side benchmark (see bench/README.md):
#   bench/run.sh [--rounds N] [--quick] [any other bench.py option]
#   bench/run.sh soak [soak.py options]        # the soak, against our node
#   bench/run.sh profile [profile.py options]  # where the time goes (perf)
#   bench/run.sh worker [worker_micro.py options]
#
# Makes (or reuses) a venv with dispy 4.15.2 -- $DISPY_VENV, default
# target/bench-venv, made from the distribution's /usr/bin/python3 (the one our
# node runs its jobs with, so both nodes run the same interpreter; another base:
# $DISPY_BASE_PYTHON) -- builds our release binary with cargo for
# the packages' target, as packaging/ does (honours CARGO_TARGET_DIR;
# DISPYNODE_BIN=path skips the build) and runs the Python harness with the
# venv's interpreter.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
venv=${DISPY_VENV:-$repo/target/bench-venv}
py=$venv/bin/python

if ! "$py" -c "import dispy, pycos; assert dispy.__version__ == '4.15.2'" 2>/dev/null; then
    echo "bench: making the venv $venv with dispy 4.15.2" >&2
    base=${DISPY_BASE_PYTHON:-}
    if [ -z "$base" ]; then
        if [ -x /usr/bin/python3 ]; then base=/usr/bin/python3; else base=python3; fi
    fi
    "$base" -m venv "$venv"
    "$py" -m pip install --disable-pip-version-check -q dispy==4.15.2
fi

if [ -n "${DISPYNODE_BIN:-}" ]; then
    bin=$DISPYNODE_BIN
else
    # The binary the packages ship (static, musl: packaging/lib.sh), built the same way.
    echo "bench: cargo build --release (the packages' target)" >&2
    bin=$(bash -c '. "$1/packaging/lib.sh" && build_release >&2 && echo "$BIN"' sh "$repo")
fi

script=bench.py
case "${1:-}" in
    soak) script=soak.py; shift ;;
    profile) script=profile.py; shift ;;
    worker) script=worker_micro.py; shift ;;
esac
if [ "$script" = worker_micro.py ]; then
    exec "$py" "$here/$script" --python "$py" "$@"
fi
BENCH_VIA_RUN_SH=1 exec "$py" "$here/$script" --venv "$venv" --node-bin "$bin" "$@"
