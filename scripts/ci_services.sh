#!/usr/bin/env bash
# Services the test suite can use: PostgreSQL binaries for the `postgres` tests (tests/pg.py starts its own server
# from them in a temp dir; nothing is configured system-wide). Idempotent; needs root for apt-get.
set -euo pipefail

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    install=(apt-get install -y --no-install-recommends postgresql)
    "${install[@]}" || { apt-get update && "${install[@]}"; }
fi
ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1
