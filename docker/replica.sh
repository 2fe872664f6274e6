#!/bin/bash
# A streaming replica: copies its primary with pg_basebackup -R on first start, then runs.
set -euo pipefail
until pg_isready -q -h "$PRIMARY_HOST" -U postgres; do sleep 1; done
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    PGPASSWORD=replicator pg_basebackup -h "$PRIMARY_HOST" -U replicator -D "$PGDATA" -R -X stream
    chmod 700 "$PGDATA"
fi
exec postgres -c max_prepared_transactions=64
