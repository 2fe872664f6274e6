#!/bin/bash
# Runs once, when a primary's data directory is created (docker-entrypoint-initdb.d): the
# application's role and database, and a role for the replicas' streaming.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" <<'SQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD 'replicator';
CREATE ROLE app LOGIN PASSWORD 'secret';
CREATE DATABASE app OWNER app;
SQL
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
