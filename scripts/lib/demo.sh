# Shared by the bench scripts: a `shardgate demo` cluster under a temp dir, stopped on exit with
# every extra process the script registered in EXTRA_PIDS.
#
#   source scripts/lib/demo.sh
#   start_demo WORK_PREFIX PORT SHARDS REPLICAS    # sets WORK, DEMO_PID, MAP
# Needs BIN (the shardgate binary).

DEMO_PID=""
EXTRA_PIDS=""
cleanup() {
    for pid in $EXTRA_PIDS; do kill "$pid" 2>/dev/null || true; done
    if [ -n "$DEMO_PID" ]; then
        kill -INT "$DEMO_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$DEMO_PID" 2>/dev/null || break; sleep 0.1; done
    fi
    [ -n "${WORK:-}" ] && rm -rf "$WORK"
}
trap cleanup EXIT

start_demo() { # prefix port shards replicas
    WORK=$(mktemp -d "/tmp/$1.XXXXXX")
    chmod 755 "$WORK"
    SHARDGATE_LOG=warn "$BIN" demo --dir "$WORK/cluster" --listen "127.0.0.1:$2" --shards "$3" --replicas "$4" \
        > "$WORK/demo.out" 2> "$WORK/demo.err" &
    DEMO_PID=$!
    for _ in $(seq 1 600); do
        grep -q SHARDGATE_DEMO_READY "$WORK/demo.out" 2>/dev/null && break
        kill -0 "$DEMO_PID" 2>/dev/null || { cat "$WORK/demo.err"; exit 1; }
        sleep 0.2
    done
    grep -q SHARDGATE_DEMO_READY "$WORK/demo.out" || { echo "demo did not start"; cat "$WORK/demo.err"; exit 1; }
    MAP=$(sed -n 's/.*SHARDGATE_DEMO_READY.* map=\([^ ]*\).*/\1/p' "$WORK/demo.out")
}
