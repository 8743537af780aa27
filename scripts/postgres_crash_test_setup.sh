#!/usr/bin/env bash
# Prepares a fresh Debian/Ubuntu machine (as root) for tests/postgres: Debian's PostgreSQL
# server and the unprivileged user the server runs as (PostgreSQL refuses to run as root).
# Idempotent; the test itself also creates the user if it is missing.
set -euo pipefail

SERVER_USER=${PGJOB_PG_USER:-pgjobtest}

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # No default "main" cluster: the tests make their own, and a stray server on 5432
    # would only be something else to clean up.
    apt-get install -y -qq postgresql-common >/dev/null
    sed -i 's/^#\?\s*create_main_cluster.*/create_main_cluster = false/' \
        /etc/postgresql-common/createcluster.conf
    apt-get install -y -qq postgresql >/dev/null
fi

if ! id -u "$SERVER_USER" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$SERVER_USER"
fi

# setpriv (util-linux) switches to the server user without an extra process.
command -v setpriv >/dev/null || { echo "setpriv (util-linux) is missing" >&2; exit 1; }
ls -d /usr/lib/postgresql/*/bin
