#!/usr/bin/env bash
# Throughput, latency and CPU of shardgate against direct Postgres, measured in one interleaved run.
#
#   scripts/bench.sh                      # 3 rounds of 10 s, 16 clients, pgbench scale 10
#   ROUNDS=6 DURATION=10 scripts/bench.sh
#   PGBOUNCER=1 scripts/bench.sh          # also PgBouncer (apt-get install -y pgbouncer), same rounds
#
# It starts `shardgate demo` (one shard: a primary and two streaming replicas) under a temp dir, loads
# pgbench data into the primary, then for each round runs every workload directly against the primary
# and through shardgate (and PgBouncer) back to back. Through shardgate the select-only workloads
# are reads balanced over the two replicas (round robin). The `rw` workload (an autocommit UPDATE,
# then a SELECT of the same row) also runs through a second shardgate with read-your-writes off
# (`shardgate_noryw`): the difference is what read-your-writes costs. It prints per workload the median tps and
# latency of each target, the ratio target/direct, the proxy's CPU per transaction (from
# /proc/PID/stat), the latency shardgate adds at 1 client, and shardgate's peak RSS (VmHWM).
# This is a benchmark, not a test: numbers move 10-30 % between runs on a 2-core machine.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-16}
SCALE=${SCALE:-10}
PORT=${PORT:-16432}
PGBOUNCER=${PGBOUNCER:-0}
cd "$(dirname "$0")/.."

cargo build --release --quiet --bin shardgate -p shardgate -p integration-tests --bin idle_clients
BIN=$PWD/target/release/shardgate
IDLE_CLIENTS=$PWD/target/release/idle_clients
IDLE=${IDLE:-1000}
# shellcheck source=scripts/lib/demo.sh
source scripts/lib/demo.sh
start_demo shardgate-bench "$PORT" 1 2
BOUNCER_PID=""
PRIMARY=$(sed -n '/^\[\[shards\]\]/,$ s/^primary = "\(.*\)"/\1/p' "$MAP" | head -1)
PPORT=${PRIMARY##*:}

export PGPASSWORD=secret
DIRECT="host=127.0.0.1 port=$PPORT user=app dbname=app"
PROXY="host=127.0.0.1 port=$PORT user=app dbname=app"
# The same server settings as shared/baseline.md on every server: shared_buffers 256MB,
# synchronous_commit off (ALTER SYSTEM works on a standby too; its file is not replicated).
REPLICAS=$(sed -n '/^\[\[shards\]\]/,$ s/^replicas = \[\(.*\)\]/\1/p' "$MAP" | head -1 | tr -d '" ' | tr ',' ' ')
RPORT=$(echo "$REPLICAS" | awk '{print $1}'); RPORT=${RPORT##*:}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
if [ "$(id -u)" = 0 ]; then AS_PG="runuser -u postgres --"; else AS_PG=""; fi
for addr in "$PRIMARY" $REPLICAS; do
    psql -X -q "host=127.0.0.1 port=${addr##*:} user=postgres password=postgres dbname=app" \
        -c "ALTER SYSTEM SET synchronous_commit = off" -c "ALTER SYSTEM SET shared_buffers = '256MB'" > /dev/null
done
for dir in "$WORK"/cluster/s0-*; do
    $AS_PG "$PGBIN/pg_ctl" -D "$dir" -w -t 60 restart -m fast > /dev/null
done
echo "loading pgbench scale $SCALE into the primary (port $PPORT)..."
pgbench -i -q -s "$SCALE" "$DIRECT" > /dev/null 2>&1

# The same cluster behind a second shardgate, read-your-writes off.
NPORT=$((PORT + 2))
SHARDGATE_LOG=warn SHARDGATE_PROXY__LISTEN="127.0.0.1:$NPORT" SHARDGATE_ROUTING__READ_YOUR_WRITES=false \
    "$BIN" run --config "$MAP" > "$WORK/noryw.out" 2>&1 &
NORYW_PID=$!
EXTRA_PIDS="$EXTRA_PIDS $NORYW_PID"
for _ in $(seq 1 50); do
    psql -X -q "host=127.0.0.1 port=$NPORT user=app dbname=app" -c "SELECT 1" > /dev/null 2>&1 && break
    sleep 0.1
done
RW_SCRIPT=$WORK/rw.sql
cat > "$RW_SCRIPT" <<EOF
\set aid random(1, 100000 * $SCALE)
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
EOF

TARGETS="direct shardgate"
READ_TARGETS="direct_replica"
if [ "$PGBOUNCER" = 1 ]; then
    command -v pgbouncer > /dev/null || { echo "PGBOUNCER=1 needs pgbouncer (apt-get install -y pgbouncer)"; exit 1; }
    BPORT=$((PORT + 1))
    BDIR=$WORK/pgbouncer
    mkdir -p "$BDIR"
    # Transaction mode for the simple-protocol workloads; 1.18 has no prepared statements in
    # transaction mode, so the prepared workload uses a second pool in session mode.
    cat > "$BDIR/pgbouncer.ini" <<EOF
[databases]
app = host=127.0.0.1 port=$PPORT dbname=app pool_mode=transaction
app_session = host=127.0.0.1 port=$PPORT dbname=app pool_mode=session
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BPORT
auth_type = plain
auth_file = $BDIR/users.txt
default_pool_size = 20
max_client_conn = 2000
unix_socket_dir =
logfile = $BDIR/pgbouncer.log
EOF
    echo '"app" "secret"' > "$BDIR/users.txt"
    # PgBouncer refuses to run as root: as root, run it as the postgres user, which owns its dir.
    if [ "$(id -u)" = 0 ]; then
        chown -R postgres "$BDIR"
        runuser -u postgres -- pgbouncer "$BDIR/pgbouncer.ini" > "$BDIR/stderr" 2>&1 &
    else
        pgbouncer "$BDIR/pgbouncer.ini" > "$BDIR/stderr" 2>&1 &
    fi
    BOUNCER_PID=$!
    EXTRA_PIDS="$EXTRA_PIDS $BOUNCER_PID"
    for _ in $(seq 1 50); do
        psql -X -q "host=127.0.0.1 port=$BPORT user=app dbname=app" -c "SELECT 1" > /dev/null 2>&1 && break
        kill -0 "$BOUNCER_PID" 2>/dev/null || { echo "pgbouncer did not start:"; cat "$BDIR/stderr" "$BDIR/pgbouncer.log" 2>/dev/null; exit 1; }
        sleep 0.1
    done
    TARGETS="direct shardgate pgbouncer"
fi

conn_for() { # target workload
    case $1 in
        direct) echo "$DIRECT" ;;
        direct_replica) echo "host=127.0.0.1 port=$RPORT user=app dbname=app" ;;
        shardgate) echo "$PROXY" ;;
        shardgate_noryw) echo "host=127.0.0.1 port=$NPORT user=app dbname=app" ;;
        pgbouncer) if [ "$2" = prepared ]; then echo "host=127.0.0.1 port=$BPORT user=app dbname=app_session"; else echo "host=127.0.0.1 port=$BPORT user=app dbname=app"; fi ;;
    esac
}
pid_for() {
    case $1 in
        shardgate) echo "$DEMO_PID" ;;
        shardgate_noryw) echo "$NORYW_PID" ;;
        # As root it runs under runuser: its own PID is runuser's child.
        pgbouncer) pgrep -x -P "$BOUNCER_PID" pgbouncer || echo "$BOUNCER_PID" ;;
        *) echo "" ;;
    esac
}
cpu_ticks() { # utime+stime of a pid, in clock ticks
    [ -n "$1" ] && [ -r "/proc/$1/stat" ] || { echo 0; return; }
    awk '{print $14 + $15}' "/proc/$1/stat"
}
TICK=$(getconf CLK_TCK)
RESULTS=$WORK/results.txt
: > "$RESULTS"

run_one() { # round target workload clients duration
    local target=$2 workload=$3 clients=$4 duration=$5 args out pid before after txns
    case $workload in
        prepared) args="-S -M prepared" ;;
        simple) args="-S -M simple" ;;
        tpcb) args="-M simple" ;;
        rw) args="-M prepared -f $RW_SCRIPT" ;;
    esac
    pid=$(pid_for "$target")
    before=$(cpu_ticks "$pid")
    # shellcheck disable=SC2086
    out=$(pgbench -n $args -c "$clients" -j 2 -T "$duration" "$(conn_for "$target" "$workload")" 2>&1) || true
    after=$(cpu_ticks "$pid")
    local tps lat
    tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
    txns=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
    if [ -z "$tps" ]; then
        echo "pgbench failed for $target $workload:" >&2
        echo "$out" | tail -5 >&2
        return
    fi
    local cpu_us=0
    if [ -n "$pid" ] && [ "${txns:-0}" -gt 0 ]; then
        cpu_us=$(awk -v a="$after" -v b="$before" -v t="$TICK" -v n="$txns" 'BEGIN{printf "%.1f", (a-b)/t*1e6/n}')
    fi
    echo "$workload $clients $target $tps $lat $cpu_us" >> "$RESULTS"
    printf '  round %s  %-9s %-9s c=%-3s tps=%-10s lat=%-8s ms  proxy_cpu=%s us/txn\n' "$1" "$workload" "$target" "$clients" "$tps" "$lat" "$cpu_us"
}

# Warm every target up (connection pools, prepared statements, shardgate's statement timings) so
# round 1 measures the same steady state as the others.
for target in $TARGETS; do
    for workload in prepared simple; do
        args="-S -M $workload"
        # shellcheck disable=SC2086
        pgbench -n $args -c "$CLIENTS" -j 2 -T 3 "$(conn_for "$target" "$workload")" > /dev/null 2>&1 || true
    done
done

for round in $(seq 1 "$ROUNDS"); do
    echo "round $round/$ROUNDS"
    for workload in prepared simple tpcb; do
        targets=$TARGETS
        [ "$workload" != tpcb ] && targets="$TARGETS $READ_TARGETS"
        for target in $targets; do
            run_one "$round" "$target" "$workload" "$CLIENTS" "$DURATION"
        done
    done
    for target in direct shardgate shardgate_noryw; do
        run_one "$round" "$target" rw "$CLIENTS" "$DURATION"
    done
    for target in $TARGETS $READ_TARGETS; do
        run_one "$round" "$target" prepared 1 "$((DURATION / 2 > 2 ? DURATION / 2 : 2))"
    done
done

median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) {print 0} else if (NR%2) {print a[(NR+1)/2]} else {printf "%.3f", (a[NR/2]+a[NR/2+1])/2}}'; }
echo
echo "medians over $ROUNDS rounds (pgbench -j 2, ${DURATION}s runs, scale $SCALE):"
printf '%-9s %-3s %-10s %12s %10s %9s %14s\n' workload c target tps lat_ms x_direct proxy_us/txn
for workload in prepared simple tpcb rw; do
    for clients in "$CLIENTS" 1; do
        [ "$clients" = 1 ] && [ "$workload" != prepared ] && continue
        targets=$TARGETS
        [ "$workload" = rw ] && targets="direct shardgate shardgate_noryw"
        if [ "$workload" = prepared ] || [ "$workload" = simple ]; then targets="$TARGETS $READ_TARGETS"; fi
        d=$(awk -v w="$workload" -v c="$clients" '$1==w && $2==c && $3=="direct" {print $4}' "$RESULTS" | median)
        dl=$(awk -v w="$workload" -v c="$clients" '$1==w && $2==c && $3=="direct" {print $5}' "$RESULTS" | median)
        for target in $targets; do
            t=$(awk -v w="$workload" -v c="$clients" -v x="$target" '$1==w && $2==c && $3==x {print $4}' "$RESULTS" | median)
            l=$(awk -v w="$workload" -v c="$clients" -v x="$target" '$1==w && $2==c && $3==x {print $5}' "$RESULTS" | median)
            cpu=$(awk -v w="$workload" -v c="$clients" -v x="$target" '$1==w && $2==c && $3==x {print $6}' "$RESULTS" | median)
            ratio=$(awk -v a="$t" -v b="$d" 'BEGIN{ if (b>0) printf "%.3f", a/b; else print "-" }')
            extra=""
            if [ "$clients" = 1 ] && [ "$target" != direct ]; then
                extra=$(awk -v a="$l" -v b="$dl" 'BEGIN{ printf "  (+%.0f us latency at 1 client)", (a-b)*1000 }')
            fi
            printf '%-9s %-3s %-10s %12s %10s %9s %14s%s\n' "$workload" "$clients" "$target" "$t" "$l" "$ratio" "$cpu" "$extra"
        done
    done
done
echo
echo "shardgate peak RSS: $(awk '/VmHWM/ {print $2, $3}' "/proc/$DEMO_PID/status")"

# Memory of idle clients: RSS before and while $IDLE authenticated clients sit idle.
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
before=$(rss "$DEMO_PID")
fifo=$WORK/idle.fifo
mkfifo "$fifo"
"$IDLE_CLIENTS" "postgres://app:secret@127.0.0.1:$PORT/app" "$IDLE" < "$fifo" > "$WORK/idle.out" 2>&1 &
IDLE_PID=$!
exec 7> "$fifo"
for _ in $(seq 1 600); do grep -q READY "$WORK/idle.out" && break; kill -0 "$IDLE_PID" 2>/dev/null || break; sleep 0.1; done
if grep -q READY "$WORK/idle.out"; then
    during=$(rss "$DEMO_PID")
    echo "$IDLE idle clients: shardgate RSS $before kB -> $during kB (+$(( (during - before) / 1024 )) MiB, $(( (during - before) * 1024 / IDLE )) bytes per client)"
else
    echo "idle clients did not connect: $(cat "$WORK/idle.out")"
fi
exec 7>&-
wait "$IDLE_PID" 2>/dev/null || true
