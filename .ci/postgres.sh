#!/usr/bin/env bash
# Ensure a PostgreSQL server answers on 127.0.0.1:5432 with trust auth and a database
# `test` (the store tests use it for real). Installs Debian's postgresql when missing.
set -euo pipefail
HOST=127.0.0.1 PORT=5432 DB=test

ready() { pg_isready -h "$HOST" -p "$PORT" -q 2>/dev/null; }
as_postgres() { if command -v runuser >/dev/null; then runuser -u postgres -- "$@"; else su postgres -s /bin/sh -c "$*"; fi; }

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  echo ">> installing PostgreSQL (Debian package postgresql)"
  if [ "$(id -u)" != 0 ]; then echo "need root to apt-get install postgresql" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
fi

if ! ready; then
  ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$ver" ]; then
    ver=$(ls /usr/lib/postgresql | sort -V | tail -1)
    pg_createcluster "$ver" main >/dev/null
  fi
  hba=/etc/postgresql/$ver/main/pg_hba.conf
  if ! grep -q "^host all all 127.0.0.1/32 trust" "$hba"; then
    # Tests connect without a password, as the CI machines do.
    sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
  fi
  echo ">> starting PostgreSQL $ver on $HOST:$PORT"
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start || pg_ctlcluster "$ver" main start
  for _ in $(seq 1 30); do ready && break; sleep 1; done
fi
ready || { echo "PostgreSQL is not answering on $HOST:$PORT" >&2; exit 1; }

if ! psql -h "$HOST" -p "$PORT" -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$DB'" 2>/dev/null | grep -q 1; then
  as_postgres psql -q -c "CREATE DATABASE $DB" || psql -h "$HOST" -p "$PORT" -U postgres -q -c "CREATE DATABASE $DB"
fi
psql -h "$HOST" -p "$PORT" -U postgres -d "$DB" -tAc "SELECT 1" >/dev/null
echo ">> PostgreSQL ready on $HOST:$PORT (database $DB)"
