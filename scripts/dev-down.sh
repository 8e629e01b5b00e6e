#!/usr/bin/env bash
# Stops what dev-up.sh started (same env vars pick the same ports). Data is left in place: the
# Postgres cluster and the NATS store dir survive for the next dev-up; Redis keeps nothing.
set -uo pipefail

state="${LIQUID_STATE_DIR:-$HOME/.cache/liquid}"
pg_cluster="${LIQUID_DEV_PG_CLUSTER:-main}"
redis_port="${LIQUID_DEV_REDIS_PORT:-6379}"
nats_port="${LIQUID_DEV_NATS_PORT:-4222}"
step() { printf '==> %s\n' "$*"; }
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# NATS: only the process whose pid dev-up recorded (nats.pid is the name older versions used).
stopped_nats=false
for pidfile in "$state/nats-$nats_port.pid" "$state/nats.pid"; do
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if [ -n "$pid" ] && grep -qa nats-server "/proc/$pid/cmdline" 2>/dev/null &&
    grep -qa -- "$nats_port" "/proc/$pid/cmdline" 2>/dev/null; then
    step "kill nats-server (pid $pid)"
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    stopped_nats=true
  fi
  rm -f "$pidfile"
done
if ! $stopped_nats && tcp_open "$nats_port"; then
  step "nats on 127.0.0.1:$nats_port was not started by dev-up (no pid file): left running"
fi

if redis-cli -h 127.0.0.1 -p "$redis_port" ping >/dev/null 2>&1; then
  step "redis-cli -p $redis_port shutdown nosave"
  redis-cli -h 127.0.0.1 -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
fi

if pg_lsclusters -h 2>/dev/null | awk '$1 == 15 && $2 == "'"$pg_cluster"'" && $4 == "online"' | grep -q .; then
  step "pg_ctlcluster 15 $pg_cluster stop"
  pg_ctlcluster 15 "$pg_cluster" stop || true
fi
step "backing services stopped"
