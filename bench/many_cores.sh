#!/bin/sh
# The many-core run of issue 12, as one prepared script: bench_executor with one worker per
# core against ProcessPoolExecutor(N), loky and multiprocessing.Pool(N), then server_load
# (against gearmand when one is on the PATH, else farm alone) and the hop floor.
#
#     sh bench/many_cores.sh            # from the repository root; results in $OUT or ./out
#
# Written for a lent machine with no package registry (16 cores, Python 3.12): wheels of
# what it lacks (setproctitle, loky, typer >= 0.26 with the pydantic it imports) wait in
# .whl/ and are installed first, e.g.
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#         --implementation cp --platform manylinux_2_28_x86_64 -d .whl \
#         setproctitle==1.3.8 loky==3.7.0 typer==0.29.2 pydantic==2.13.4 \
#         pydantic_core==2.46.4 annotated-types typing-inspection typing_extensions
# No gearmand there either: this machine's binary with the libraries `ldd` names (all
# but libc's own) can travel in .whl/gm/lib, behind a .whl/gm/bin/gearmand that sets
# LD_LIBRARY_PATH and execs it; the script puts .whl/gm/bin first on the PATH.
# Every step has its own time limit, so one that hangs leaves the others their figures.
# Knobs (environment): WORKERS (default: the cores), SCALE (calls times K, default 4:
# 16 workers run the 1 ms row's 2,000 calls in 1/8 s), ROUNDS (5), HOGS (2), LIMIT
# (bench_executor's seconds, 420), SERVER_ROUNDS (server_load's, 5), SERVER_LIMIT (its
# seconds, 240).
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
WORKERS=${WORKERS:-$(nproc)}
SCALE=${SCALE:-4}
ROUNDS=${ROUNDS:-5}
HOGS=${HOGS:-2}
LIMIT=${LIMIT:-420}
SERVER_ROUNDS=${SERVER_ROUNDS:-5}
SERVER_LIMIT=${SERVER_LIMIT:-240}
export PYTHONUNBUFFERED=1
PATH="$PWD/.whl/gm/bin:$PATH"
# farm is not installed there: every process it starts imports it from this checkout
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
    echo "## the machine"
    date -u
    nproc
    grep -m1 'model name' /proc/cpuinfo
    "$PY" --version
} 2>&1 | tee "$OUT/machine.txt"

if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        .whl/*.whl 2>&1 | tail -3
fi
"$PY" -c "import farm.cli.app, setproctitle, uvloop, psutil, cloudpickle, loky, pydantic" || exit 3

timeout -k 10 "$LIMIT" "$PY" -m bench.bench_executor --workers "$WORKERS" --scale "$SCALE" \
    --rounds "$ROUNDS" --hogs "$HOGS" 2>&1 | tee "$OUT/bench_executor.md"
if gearmand --version >/dev/null 2>&1; then THREADS=0,1,4; else THREADS=''; fi
timeout -k 10 "$SERVER_LIMIT" "$PY" -m bench.server_load --gearmand-threads "$THREADS" \
    --rounds "$SERVER_ROUNDS" 2>&1 \
    | tee "$OUT/server_load.md"
timeout -k 10 40 "$PY" -m bench.hop_floor --rounds 3 2>&1 | tee "$OUT/hop_floor.md"
