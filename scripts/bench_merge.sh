#!/usr/bin/env bash
# Scatter-gather through shardgate: `ORDER BY ... LIMIT 10` over 3 shards of ROWS rows each (1M by
# default), against the same query directly on each shard; then every row of the 3 shards merged in
# order. Shows the merge's time next to the slowest shard's, and shardgate's memory staying flat
# (its rows are merged as they come, one held per shard).
#
#   scripts/bench_merge.sh                 # 3 shards x 1M rows, 20 runs of each query
#   ROWS=200000 RUNS=10 scripts/bench_merge.sh
#
# It starts `shardgate demo --shards 3 --replicas 0` under a temp dir (its map shards `users` by
# id) and loads each shard's primary directly with its rows. Reported: the mean latency of
# pgbench -c 1 running the query (through shardgate; directly on one shard alone; directly on all
# three at once, the slowest of them: what the shards cost when they run side by side as under the
# proxy), shardgate's CPU per query, and its peak RSS before and after. A benchmark, not a test.
set -euo pipefail

ROWS=${ROWS:-1000000}
RUNS=${RUNS:-20}
PORT=${PORT:-17532}
cd "$(dirname "$0")/.."

cargo build --release --quiet --bin shardgate
BIN=$PWD/target/release/shardgate
# shellcheck source=scripts/lib/demo.sh
source scripts/lib/demo.sh
start_demo shardgate-bench-merge "$PORT" 3 0
PRIMARIES=$(sed -n 's/^primary = "\(.*\)"/\1/p' "$MAP")
export PGPASSWORD=secret
PROXY="host=127.0.0.1 port=$PORT user=app dbname=app"
PROXY_PID=$DEMO_PID
ticks() { awk '{print $14 + $15}' "/proc/$PROXY_PID/stat"; }
hwm() { awk '/VmHWM/ {print $2 / 1024 " MiB"}' "/proc/$PROXY_PID/status"; }

echo "loading $ROWS rows on each of 3 shards..."
psql -X -q "$PROXY" -c "CREATE TABLE users (id bigint PRIMARY KEY, v int NOT NULL, pad text)"
i=0
LOADS=""
for addr in $PRIMARIES; do
    psql -X -q "host=127.0.0.1 port=${addr##*:} user=app dbname=app" -c "
        INSERT INTO users SELECT g, (g::bigint * 7919) % 1000003, repeat('x', 40)
        FROM generate_series($((i * ROWS + 1)), $(((i + 1) * ROWS))) g" -c "VACUUM ANALYZE users" &
    LOADS="$LOADS $!"
    i=$((i + 1))
done
# shellcheck disable=SC2086
wait $LOADS
# Proxy internal connections and caches warm.
psql -X -q "$PROXY" -c "SELECT id FROM users ORDER BY v DESC LIMIT 10" > /dev/null

Q="SELECT id, v, pad FROM users ORDER BY v DESC, id LIMIT 10"
echo "$Q" > "$WORK/q.sql"
lat() { # conninfo -> mean latency in ms
    pgbench -n -c 1 -t "$RUNS" -f "$WORK/q.sql" "$1" 2>/dev/null | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p'
}
echo "RSS before: $(hwm)"
t0=$(ticks)
through=$(lat "$PROXY")
t1=$(ticks)
first=$(echo "$PRIMARIES" | head -1)
alone=$(lat "host=127.0.0.1 port=${first##*:} user=app dbname=app")
: > "$WORK/side"
SIDE=""
for addr in $PRIMARIES; do
    (lat "host=127.0.0.1 port=${addr##*:} user=app dbname=app" >> "$WORK/side") &
    SIDE="$SIDE $!"
done
# shellcheck disable=SC2086
wait $SIDE
slowest=$(sort -n "$WORK/side" | tail -1)
cpu=$(echo "($t1 - $t0) * 10000 / $RUNS" | bc -l)
printf "\n%s\n" "$Q"
printf "  through shardgate (3 shards)            %8.1f ms   shardgate CPU %.0f us/query\n" "$through" "$cpu"
printf "  one shard directly, alone              %8.1f ms\n" "$alone"
printf "  three shards directly at once, slowest %8.1f ms\n" "$slowest"
echo "  RSS after: $(hwm)"

echo
echo "every row of the 3 shards in order (SELECT id, v FROM users ORDER BY v, id), rows counted by psql:"
t0=$(ticks)
start=$(date +%s.%N)
n=$(psql -X -At "$PROXY" -c "SELECT id, v FROM users ORDER BY v, id" | wc -l)
secs=$(echo "$(date +%s.%N) - $start" | bc)
t1=$(ticks)
printf "  %d rows in %.1f s; shardgate CPU %.2f s; RSS after: %s\n" "$n" "$secs" \
    "$(echo "($t1 - $t0) / 100" | bc -l)" "$(hwm)"
