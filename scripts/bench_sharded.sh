#!/usr/bin/env bash
# What sharding costs: pgbench through shardgate over 2 shards against a direct connection to one
# Postgres holding all the data, interleaved round by round.
#
#   scripts/bench_sharded.sh                  # 3 rounds of 10 s, 16 clients, pgbench scale 10
#   ROUNDS=5 DURATION=10 scripts/bench_sharded.sh
#
# It starts `shardgate demo --shards 2 --replicas 0` under a temp dir, then a shardgate whose map
# shards pgbench_accounts and pgbench_history by aid (branches and tellers are on every shard), and
# runs `pgbench -i` through it: the DDL goes to both shards, the accounts' COPY is split by aid. The
# direct target is a database on shard 0's primary with all of pgbench's data. Workloads:
#   select_prepared  pgbench -S -M prepared   (a key lookup: one shard, $1 in binary)
#   select_simple    pgbench -S               (a key lookup: one shard, literal key)
#   two_accounts     BEGIN; two UPDATEs of random accounts; END  (half of them on two shards:
#                    two-phase commit through shardgate; one transaction directly)
# It prints per workload the median tps and latency, the ratio shardgate/direct and shardgate's CPU
# per transaction (/proc/PID/stat). A benchmark, not a test: numbers move 10-30 % between runs.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-16}
SCALE=${SCALE:-10}
PORT=${PORT:-17432}
cd "$(dirname "$0")/.."

cargo build --release --quiet --bin shardgate
BIN=$PWD/target/release/shardgate
# shellcheck source=scripts/lib/demo.sh
source scripts/lib/demo.sh
start_demo shardgate-bench-sharded "$PORT" 2 0
PRIMARIES=$(sed -n 's/^primary = "\(.*\)"/\1/p' "$MAP")
P0=$(echo "$PRIMARIES" | head -1); P0=${P0##*:}

# The same server settings as shared/baseline.md on both primaries.
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
if [ "$(id -u)" = 0 ]; then AS_PG="runuser -u postgres --"; else AS_PG=""; fi
for addr in $PRIMARIES; do
    psql -X -q "host=127.0.0.1 port=${addr##*:} user=postgres password=postgres dbname=app" \
        -c "ALTER SYSTEM SET synchronous_commit = off" -c "ALTER SYSTEM SET shared_buffers = '256MB'" > /dev/null
done
for dir in "$WORK"/cluster/s*-primary; do
    $AS_PG "$PGBIN/pg_ctl" -D "$dir" -w -t 60 restart -m fast > /dev/null
done

SPORT=$((PORT + 1))
sed -e "s/^listen = .*/listen = \"127.0.0.1:$SPORT\"/" "$MAP" > "$WORK/sharded.toml"
cat >> "$WORK/sharded.toml" <<EOF

[[tables]]
name = "pgbench_accounts"
shard_key = "aid"

[[tables]]
name = "pgbench_history"
shard_key = "aid"
EOF
SHARDGATE_LOG=warn "$BIN" run --config "$WORK/sharded.toml" > "$WORK/proxy.out" 2>&1 &
PROXY_PID=$!
EXTRA_PIDS="$EXTRA_PIDS $PROXY_PID"
export PGPASSWORD=secret
PROXY="host=127.0.0.1 port=$SPORT user=app dbname=app"
for _ in $(seq 1 50); do psql -X -q "$PROXY" -c "SELECT 1" > /dev/null 2>&1 && break; sleep 0.1; done

echo "pgbench -i -s $SCALE through shardgate (DDL on both shards, COPY split by aid)..."
start=$(date +%s.%N)
pgbench -i -q -s "$SCALE" "$PROXY" > "$WORK/init.out" 2>&1 || { cat "$WORK/init.out"; exit 1; }
echo "  took $(echo "$(date +%s.%N) - $start" | bc | xargs printf '%.1f') s"
for addr in $PRIMARIES; do
    n=$(psql -X -At "host=127.0.0.1 port=${addr##*:} user=app dbname=app" -c "SELECT count(*) FROM pgbench_accounts")
    echo "  shard at $addr: $n accounts"
done
psql -X -q "host=127.0.0.1 port=$P0 user=postgres password=postgres dbname=app" -c "CREATE DATABASE direct OWNER app" > /dev/null
DIRECT="host=127.0.0.1 port=$P0 user=app dbname=direct"
pgbench -i -q -s "$SCALE" "$DIRECT" > /dev/null 2>&1

TWO=$WORK/two.sql
cat > "$TWO" <<EOF
\set a1 random(1, 100000 * $SCALE)
\set a2 random(1, 100000 * $SCALE)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :a1;
UPDATE pgbench_accounts SET abalance = abalance - 1 WHERE aid = :a2;
END;
EOF

ticks() { awk '{print $14 + $15}' "/proc/$PROXY_PID/stat"; }
run() { # target workload -> "tps latency_ms cpu_us_per_tx"
    local conn=$DIRECT
    [ "$1" = shardgate ] && conn=$PROXY
    local args
    case $2 in
        select_prepared) args=(-S -M prepared) ;;
        select_simple) args=(-S) ;;
        two_accounts) args=(-f "$TWO") ;;
    esac
    local t0; t0=$(ticks)
    local out; out=$(pgbench -n -c "$CLIENTS" -j 2 -T "$DURATION" "${args[@]}" "$conn" 2>&1)
    local t1; t1=$(ticks)
    local tps; tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    local lat; lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
    local cpu=0
    [ "$1" = shardgate ] && cpu=$(echo "($t1 - $t0) * 10000 / ($tps * $DURATION)" | bc -l)
    echo "$tps $lat $cpu"
}

WORKLOADS="select_prepared select_simple two_accounts"
for round in $(seq 1 "$ROUNDS"); do
    for w in $WORKLOADS; do
        for t in direct shardgate; do
            echo "$w $t $(run "$t" "$w")" >> "$WORK/results"
        done
    done
    echo "round $round done"
done

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
printf "\n%-16s %-10s %10s %10s %8s %12s\n" workload target tps "lat ms" ratio "cpu us/tx"
for w in $WORKLOADS; do
    dtps=$(awk -v w="$w" '$1==w && $2=="direct" {print $3}' "$WORK/results" | median)
    for t in direct shardgate; do
        tps=$(awk -v w="$w" -v t="$t" '$1==w && $2==t {print $3}' "$WORK/results" | median)
        lat=$(awk -v w="$w" -v t="$t" '$1==w && $2==t {print $4}' "$WORK/results" | median)
        cpu=$(awk -v w="$w" -v t="$t" '$1==w && $2==t {print $5}' "$WORK/results" | median)
        printf "%-16s %-10s %10.0f %10.2f %8.2f %12.1f\n" "$w" "$t" "$tps" "$lat" "$(echo "$tps / $dtps" | bc -l)" "$cpu"
    done
done
echo "shardgate peak RSS: $(awk '/VmHWM/ {print $2, $3}' "/proc/$PROXY_PID/status")"
