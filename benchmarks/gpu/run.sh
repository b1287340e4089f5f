#!/usr/bin/env bash
# The GPU proof kit: on a machine with a CUDA GPU, in one call of at most 10 minutes on an H100,
# run polyfit's GPU-marked tests, measure fit_many's throughput on the card against the CPUs,
# check that the card's results agree with the CPU's, time the fused path (torch.compile, Triton)
# against the unfused one, run a 100,000-job sweep and a mixed
# cpu/cuda sweep through real `polyfit worker` processes on Redis, and force a CUDA
# out-of-memory error; write gpu-report.json and gpu-report.md.
#
#   bash benchmarks/gpu/run.sh          the real run (after prepare.sh; carry .whl and .gpu-kit)
#   bash benchmarks/gpu/run.sh --cpu    the dry run on a machine without a GPU: emulated devices,
#                                       tiny sizes, this environment's packages, the system's
#                                       redis-server; the same steps and report files
#
# Reports go to $OUT when it is set, else to a new folder that is printed. Each step is timed and
# bounded (KIT_T_<STEP> seconds, e.g. KIT_T_FLEET=300), sizes are KIT_* variables
# (`python -m benchmarks.gpu.kit sizes --mode cuda` lists them), and a failing step does not stop
# the later ones: the report records it and the script exits 1 at the end.
# Environment: PYTHON (default python3), KIT_REDIS_SERVER (a redis-server to use instead),
# KIT_KEEP_WORK=1 (keep the working folder).
set -uo pipefail

MODE=cuda
case "${1:-}" in
    "") ;;
    --cpu) MODE=cpu ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: bash benchmarks/gpu/run.sh [--cpu]" >&2; exit 2 ;;
esac

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO" || exit 2
PY=${PYTHON:-python3}
REPORT_DIR=${OUT:-}
[ -n "$REPORT_DIR" ] || REPORT_DIR=$(mktemp -d /tmp/polyfit-gpu-report.XXXXXX)
mkdir -p "$REPORT_DIR"
WORK=$(mktemp -d /tmp/polyfit-gpu-kit.XXXXXX)
mkdir -p "$WORK/rc" "$WORK/logs" "$WORK/redis"
export KIT_STARTED_EPOCH=$(date +%s)
export PYTHONUNBUFFERED=1

# Seconds each step may take: the GPU run's add up to under 10 minutes with the set-up around
# them (the GPU tests and the fusion step compile the fused kernels: Triton, seconds each).
# The dry run's are bounds for the worst machine that runs the test suite, not for this one:
# its work is fixed by its tiny sizes (none of its steps does more when given more time), and
# it takes about a minute on two idle cores; but a cold compile of the fusion step alone took
# 18-23 s on an idle 2-core machine and over 60 s on one whose cores were busy, and every step
# starts torch (1.5 s idle, several seconds loaded). A limit hit there fails CI for nothing.
if [ "$MODE" = cuda ]; then
    T_SETUP=45 T_GPU_TESTS=90 T_THROUGHPUT=105 T_AGREEMENT=40 T_FUSION=120 T_FLEET=195
    T_MEMORY=35
else
    T_SETUP=150 T_GPU_TESTS=180 T_THROUGHPUT=150 T_AGREEMENT=120 T_FUSION=300 T_FLEET=300
    T_MEMORY=120
fi
T_SETUP=${KIT_T_SETUP:-$T_SETUP}
T_GPU_TESTS=${KIT_T_GPU_TESTS:-$T_GPU_TESTS}
T_THROUGHPUT=${KIT_T_THROUGHPUT:-$T_THROUGHPUT}
T_AGREEMENT=${KIT_T_AGREEMENT:-$T_AGREEMENT}
T_FUSION=${KIT_T_FUSION:-$T_FUSION}
T_FLEET=${KIT_T_FLEET:-$T_FLEET}
T_MEMORY=${KIT_T_MEMORY:-$T_MEMORY}

REDIS_PID=""
# The fleet step's workers run in their own sessions; whatever became of the step, none may
# outlive it (one left behind would hold the GPU, and a device keeps such processes running).
kill_workers() {
    local pgid
    [ -f "$WORK/worker.pgids" ] || return 0
    while read -r pgid; do
        [ -n "$pgid" ] && kill -KILL -- "-$pgid" 2>/dev/null
    done <"$WORK/worker.pgids"
    rm -f "$WORK/worker.pgids"
}
cleanup() {
    kill_workers
    if [ -n "$REDIS_PID" ]; then
        kill "$REDIS_PID" 2>/dev/null
        wait "$REDIS_PID" 2>/dev/null
    fi
    [ "${KIT_KEEP_WORK:-}" = 1 ] || rm -rf "$WORK"
}

# step NAME LIMIT [ARGS...]: run one kit step under `timeout`; its exit code goes to WORK/rc.
step() {
    local name=$1 limit=$2 rc started
    shift 2
    started=$(date +%s)
    echo "== $name (at most ${limit} s)"
    timeout -k 10 "$limit" "$PY" -m benchmarks.gpu.kit "$name" --work "$WORK" --mode "$MODE" \
        --budget $((limit > 16 ? limit - 8 : limit / 2)) "$@"
    rc=$?
    echo "$rc" >"$WORK/rc/$name"
    echo "== $name: exit $rc after $(($(date +%s) - started)) s"
}

start_redis() {
    local server=${KIT_REDIS_SERVER:-}
    if [ -z "$server" ]; then
        if [ "$MODE" = cuda ]; then
            server=$REPO/.gpu-kit/redis/bin/redis-server
        else
            server=$(command -v redis-server || echo "$REPO/.gpu-kit/redis/bin/redis-server")
        fi
    fi
    if [ ! -x "$server" ]; then
        echo "run.sh: no redis-server at $server (run benchmarks/gpu/prepare.sh and carry" \
             ".gpu-kit, or set KIT_REDIS_SERVER); the fleet step will fail"
        return 1
    fi
    REDIS_PORT=$("$PY" -m benchmarks.gpu.kit free-port)
    "$server" --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$WORK/redis" --save '' \
        --appendonly no --daemonize no --loglevel warning --logfile "$WORK/logs/redis.log" &
    REDIS_PID=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null; then
            echo "redis: $("$server" --version | cut -d' ' -f1-3) on 127.0.0.1:$REDIS_PORT"
            return 0
        fi
        kill -0 "$REDIS_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "run.sh: redis-server did not start; its log and loader say:"
    cat "$WORK/logs/redis.log" 2>/dev/null
    case "$server" in
        "$REPO"/.gpu-kit/*) LD_LIBRARY_PATH="$REPO/.gpu-kit/redis/lib" \
                                ldd "$REPO/.gpu-kit/redis/libexec/redis-server" | grep -i 'not found\|version' ;;
    esac
    return 1
}

main() {
    trap cleanup EXIT  # main runs in the pipeline's subshell: the trap must be set there
    echo "polyfit GPU kit: mode $MODE, reports in $REPORT_DIR, work in $WORK"
    local setup_args=()
    if [ "$MODE" = cuda ]; then
        local manifest=.whl/gpu-kit-wheels.txt
        if [ -f "$manifest" ]; then
            local wheels=()
            mapfile -t wheels < <(sed 's|^|.whl/|' "$manifest")
            echo "installing ${#wheels[@]} carried wheels into $WORK/site"
            timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile \
                --no-cache-dir --target "$WORK/site" "${wheels[@]}" \
                || echo "run.sh: installing the carried wheels failed"
            setup_args=(--site "$WORK/site" --wheels .whl)
        else
            echo "run.sh: no $manifest: run benchmarks/gpu/prepare.sh where pip works, and" \
                 "carry .whl and .gpu-kit"
        fi
        export PYTHONPATH="$WORK/site:$REPO"
    else
        export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    fi

    step setup "$T_SETUP" "${setup_args[@]}"
    local redis_url=""
    if start_redis; then redis_url="redis://127.0.0.1:$REDIS_PORT/0"; fi
    step gpu-tests "$T_GPU_TESTS"
    step throughput "$T_THROUGHPUT"
    step agreement "$T_AGREEMENT"
    step fusion "$T_FUSION"
    step fleet "$T_FLEET" ${redis_url:+--redis "$redis_url"}
    kill_workers
    step memory "$T_MEMORY"

    "$PY" -m benchmarks.gpu.kit report --work "$WORK" --out "$REPORT_DIR" --mode "$MODE"
    local rc=$?
    tar -czf "$REPORT_DIR/gpu-kit-logs.tar.gz" -C "$WORK" logs steps 2>/dev/null
    echo "polyfit GPU kit: $(($(date +%s) - KIT_STARTED_EPOCH)) s in all; reports in $REPORT_DIR"
    return $rc
}

main 2>&1 | tee "$REPORT_DIR/gpu-kit.log"
exit "${PIPESTATUS[0]}"
