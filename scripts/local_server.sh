#!/usr/bin/env bash
# Start or stop a local Prefect server on 127.0.0.1 and a process worker for the sam2-gpu pool, by PID.
#
#   scripts/local_server.sh start [PORT]    # server + pool + deployments + worker; prints the exports to use
#   scripts/local_server.sh stop            # stops the worker and the server (by their recorded PIDs)
#
# State (PIDs, logs, the server's database) lives in $SAM2PTQ_PREFECT_DIR (default ./.prefect-local).
# The processes are started under setsid so that they can be stopped by PID from any shell (a worker started with
# '&' from a non-interactive shell ignores the first SIGTERM).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${SAM2PTQ_PREFECT_DIR:-$PWD/.prefect-local}
PY=${PYTHON:-$PWD/.venv/bin/python}
PREFECT="$PY -m prefect"
mkdir -p "$DIR"
export PREFECT_HOME="$DIR/home" DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false

stop_pid() {  # stop_pid NAME: SIGTERM, wait up to 20 s, then SIGKILL
    local f="$DIR/$1.pid"
    [ -f "$f" ] || return 0
    local pid; pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
    echo "stopped $1 ($pid)"
}

case "${1:-}" in
start)
    PORT=${2:-4200}
    export PREFECT_API_URL="http://127.0.0.1:$PORT/api"
    setsid $PREFECT server start --host 127.0.0.1 --port "$PORT" >"$DIR/server.log" 2>&1 < /dev/null &
    echo $! >"$DIR/server.pid"
    for _ in $(seq 120); do
        curl -fsS "$PREFECT_API_URL/health" >/dev/null 2>&1 && break
        sleep 0.5
    done
    curl -fsS "$PREFECT_API_URL/health" >/dev/null || { echo "server did not start; see $DIR/server.log" >&2; exit 1; }
    for pool in sam2-gpu sam2-control; do  # GPU jobs; sweep parents (they only wait on their children)
        $PREFECT work-pool inspect $pool >/dev/null 2>&1 || $PREFECT work-pool create $pool --type process >/dev/null
    done
    $PREFECT --no-prompt deploy --all >"$DIR/deploy.log" 2>&1 \
        || { echo "prefect deploy failed; see $DIR/deploy.log" >&2; exit 1; }
    setsid $PREFECT worker start --pool sam2-gpu --limit 1 >"$DIR/worker.log" 2>&1 < /dev/null &
    echo $! >"$DIR/worker.pid"
    echo "export PREFECT_HOME=$PREFECT_HOME PREFECT_API_URL=$PREFECT_API_URL"
    echo "server pid $(cat "$DIR/server.pid"), worker pid $(cat "$DIR/worker.pid"); logs in $DIR"
    ;;
stop)
    stop_pid worker
    stop_pid server
    ;;
*)
    echo "usage: $0 start [PORT] | stop" >&2
    exit 2
    ;;
esac
