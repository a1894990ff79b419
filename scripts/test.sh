#!/usr/bin/env bash
# The test command (README): sets up what the tests need, then runs every test (lint included) against
# real PostgreSQL, Redis, vLLM and Prometheus. Extra arguments go to pytest (`bash scripts/test.sh
# tests/gateway -x`). Each step is skipped when its part is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
HOST=127.0.0.1 PG_PORT=5432 REDIS_PORT=6379

say() { printf 'test.sh: %s\n' "$*"; }
die() { printf 'test.sh: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }

apt_install() {  # Debian packages, only where apt-get exists and we may use it
  command -v apt-get >/dev/null 2>&1 || return 1
  say "installing $* with apt-get"
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Prometheus: the dashboard tests run every panel's query against a real one.
if ! command -v prometheus >/dev/null 2>&1; then
  apt_install prometheus || die "Prometheus is missing: install it (Debian: apt-get install prometheus) or put a \
prometheus binary on PATH, then run this again."
fi

# PostgreSQL (trust auth, database 'test'; LLMSVC_TEST_PG overrides), started if it is down.
if [ -z "${LLMSVC_TEST_PG:-}" ] && ! pg_isready -h "$HOST" -p "$PG_PORT" -q 2>/dev/null; then
  command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ] \
    || die "PostgreSQL is not running on $HOST:$PG_PORT and no Debian cluster is installed: start one with \
trust auth and a database 'test', or point LLMSVC_TEST_PG at yours."
  say "starting PostgreSQL"
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
fi

# Redis (LLMSVC_TEST_REDIS overrides), started if it is down, installed if it is missing.
if [ -z "${LLMSVC_TEST_REDIS:-}" ] && ! redis-cli -h "$HOST" -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server redis-tools \
    || die "Redis is not running on $HOST:$REDIS_PORT: install redis-server, or point LLMSVC_TEST_REDIS at yours."
  say "starting Redis"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
for _ in $(seq 1 30); do
  { [ -n "${LLMSVC_TEST_PG:-}" ] || pg_isready -h "$HOST" -p "$PG_PORT" -q 2>/dev/null; } \
    && { [ -n "${LLMSVC_TEST_REDIS:-}" ] || redis-cli -h "$HOST" -p "$REDIS_PORT" ping >/dev/null 2>&1; } && break
  sleep 1
done

# The Python environment (a no-op when .venv matches pyproject.toml).
bash scripts/install.sh

export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
say "running the tests"
# The 25 slowest steps are listed at the end, so a run that grows shows where its time went.
exec .venv/bin/python -m pytest --durations=25 "$@"
