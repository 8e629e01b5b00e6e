#!/usr/bin/env bash
# Starts the backing services the tests use, on loopback, idempotently (whatever already answers
# is left alone), waits until each one answers and prints the URLs as env exports:
#   PostgreSQL 15  the Debian cluster (the server refuses to run as root), role liquid/liquid
#   Redis 7        redis-server --daemonize yes, no persistence
#   NATS 2.15      nats-server -js, store dir, pid file and log under $LIQUID_STATE_DIR
# Ports and names can be moved with the env vars below (tests of this script use that to run a
# second set beside the shared one); the defaults are what the test suite expects.
set -euo pipefail

state="${LIQUID_STATE_DIR:-$HOME/.cache/liquid}"
pg_cluster="${LIQUID_DEV_PG_CLUSTER:-main}"
pg_port="${LIQUID_DEV_PG_PORT:-5432}"
redis_port="${LIQUID_DEV_REDIS_PORT:-6379}"
nats_port="${LIQUID_DEV_NATS_PORT:-4222}"
export PATH="${LIQUID_TOOLS_DIR:-$HOME/.cache/liquid/bin}:$PATH"
mkdir -p "$state"

step() { printf '==> %s\n' "$*"; }
die() { printf 'dev-up: %s\n' "$*" >&2; exit 1; }
now() { printf '%s' "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
# wait_for WHAT SECONDS COMMAND...: polls every 0.1 s.
wait_for() {
  local what=$1 secs=$2 i
  shift 2
  for ((i = 0; i < secs * 10; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "$what did not answer within ${secs}s"
}
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

for tool in pg_ctlcluster redis-server redis-cli nats-server; do
  command -v "$tool" >/dev/null || die "$tool not found: run 'make deps' first"
done

# PostgreSQL 15.
t0=$(now)
if ! pg_lsclusters -h 2>/dev/null | awk '{print $1, $2}' | grep -qx "15 $pg_cluster"; then
  step "pg_createcluster 15 $pg_cluster -p $pg_port"
  pg_createcluster 15 "$pg_cluster" -p "$pg_port" >/dev/null
fi
if pg_isready -q -h 127.0.0.1 -p "$pg_port"; then
  step "postgres already answers on 127.0.0.1:$pg_port"
else
  step "pg_ctlcluster 15 $pg_cluster start"
  pg_ctlcluster 15 "$pg_cluster" start ||
    die "postgres did not start; see /var/log/postgresql/postgresql-15-$pg_cluster.log"
  wait_for "postgres on 127.0.0.1:$pg_port" 30 pg_isready -q -h 127.0.0.1 -p "$pg_port"
fi
# The role the tests connect as; SUPERUSER because tests create and drop a database each.
# Running the ALTER every time also repairs a role whose password or rights were changed.
runuser -u postgres -- psql -q -p "$pg_port" -v ON_ERROR_STOP=1 <<'SQL' >/dev/null
SELECT 'CREATE ROLE liquid' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'liquid') \gexec
ALTER ROLE liquid WITH LOGIN SUPERUSER PASSWORD 'liquid';
SQL
wait_for "postgres login as liquid" 10 \
  env PGPASSWORD=liquid psql -h 127.0.0.1 -p "$pg_port" -U liquid -d postgres -tAc 'SELECT 1'
step "postgres ready ($(since "$t0"))"

# Redis 7.
t0=$(now)
if redis-cli -h 127.0.0.1 -p "$redis_port" ping >/dev/null 2>&1; then
  step "redis already answers on 127.0.0.1:$redis_port"
else
  step "redis-server --bind 127.0.0.1 --port $redis_port --save '' --daemonize yes"
  redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --daemonize yes \
    --dir "$state" --logfile "$state/redis-$redis_port.log" --pidfile "$state/redis-$redis_port.pid"
  wait_for "redis on 127.0.0.1:$redis_port (log $state/redis-$redis_port.log)" 10 \
    redis-cli -h 127.0.0.1 -p "$redis_port" ping
fi
step "redis ready ($(since "$t0"))"

# NATS with JetStream.
t0=$(now)
nats_pid="$state/nats-$nats_port.pid"
nats_log="$state/nats-$nats_port.log"
if tcp_open "$nats_port"; then
  step "nats already answers on 127.0.0.1:$nats_port"
else
  step "nats-server -js -a 127.0.0.1 -p $nats_port -sd $state/nats-$nats_port (log $nats_log)"
  mkdir -p "$state/nats-$nats_port"
  # setsid: the server outlives this script and the make/CI step that ran it.
  setsid nohup nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$state/nats-$nats_port" \
    </dev/null >"$nats_log" 2>&1 &
  echo $! >"$nats_pid"
  wait_for "nats on 127.0.0.1:$nats_port (log $nats_log)" 15 tcp_open "$nats_port"
fi
step "nats ready ($(since "$t0"))"

cat <<URLS
export LIQUID_TEST_POSTGRES_URL=postgres://liquid:liquid@127.0.0.1:$pg_port/postgres
export LIQUID_TEST_REDIS_URL=redis://127.0.0.1:$redis_port
export LIQUID_TEST_NATS_URL=nats://127.0.0.1:$nats_port
URLS
