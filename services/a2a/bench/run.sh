#!/usr/bin/env bash
# Loopback throughput of the a2a service against the official Python SDK (a2a-sdk 1.3.0 from
# `make deps`, tests/python/sdk_server.py: DefaultRequestHandler, uvicorn, one worker) in the same
# run, with wrk: blocking SendMessage and SendStreamingMessage (JSON-RPC, a new task per request),
# GetTask (HTTP+JSON) and the agent card. Both run the same echo agent (an artifact, then
# COMPLETED) on a durable SQLite task store (the SDK's DatabaseTaskStore over aiosqlite; ours
# with the `platform` profile); ours also verifies a bearer token on every call.
#
#   cargo build --release -p liquid-a2a-service
#   services/a2a/bench/run.sh            # DURATION=10s CONNECTIONS=32 THREADS=2 by default
#   SDK_STORE=memory services/a2a/bench/run.sh   # the SDK on its InMemoryTaskStore instead
#   OURS_DATABASE_URL=postgres://... run.sh      # ours on an empty PostgreSQL database
#
# Prints one line per server and scenario: requests/s and p50/p99 latency (wrk --latency).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin="${LIQUID_A2A_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/liquid/target}/release/liquid-a2a-service}"
[ -x "$bin" ] || { echo "run.sh: $bin is not built; cargo build --release -p liquid-a2a-service" >&2; exit 1; }
command -v wrk >/dev/null || { echo "run.sh: wrk not found" >&2; exit 1; }
python3 -c "import importlib.metadata as m, sys; sys.exit(m.version('a2a-sdk') != '1.3.0')" 2>/dev/null ||
  { echo "run.sh: a2a-sdk 1.3.0 is not installed; run 'make deps'" >&2; exit 1; }
duration=${DURATION:-10s}
connections=${CONNECTIONS:-32}
threads=${THREADS:-2}
ours_http=${OURS_HTTP_PORT:-18181}
ours_grpc=${OURS_GRPC_PORT:-19181}
py_http=${PY_HTTP_PORT:-18182}
py_grpc=${PY_GRPC_PORT:-19182}
work=$(mktemp -d)
secret=liquid-bench-development-secret-$(date +%s)-padding
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
ours_db=${OURS_DATABASE_URL:-sqlite://$work/a2a.db}

LIQUID_A2A__SERVER__HTTP_ADDR=127.0.0.1:$ours_http \
LIQUID_A2A__SERVER__GRPC_ADDR=127.0.0.1:$ours_grpc \
LIQUID_A2A__DATABASE__URL=$ours_db \
LIQUID_A2A__A2A__PROFILE=platform \
LIQUID_A2A__A2A__IDEMPOTENT_MESSAGE_IDS=false \
LIQUID_A2A__AUTH__ALLOW_HS256_DEV=true \
LIQUID_A2A__AUTH__HS256_SECRET=$secret \
LIQUID_A2A__TELEMETRY__LOG_FILTER=warn \
  "$bin" >"$work/ours.log" 2>&1 &
pids+=($!)
sdk_store=${SDK_STORE:-sqlite}
[ "$sdk_store" = sqlite ] && sdk_store=sqlite:$work/sdk.db
python3 "$here/../tests/python/sdk_server.py" "$py_http" "$py_grpc" "$sdk_store" >"$work/sdk.log" 2>&1 &
pids+=($!)
for port in "$ours_http" "$py_http"; do
  for _ in $(seq 200); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/.well-known/agent-card.json" 2>/dev/null && break
    sleep 0.1
  done
done

TOKEN=$(python3 - "$secret" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=")
now = int(time.time())
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": "bench", "tenant": "bench", "iss": "liquid", "aud": "liquid",
                       "iat": now, "exp": now + 7200, "scope": "a2a:*"}).encode())
sig = b64(hmac.new(sys.argv[1].encode(), head + b"." + body, hashlib.sha256).digest())
print((head + b"." + body + b"." + sig).decode())
PY
)

# One completed task per server, for GetTask.
task_of() {
  curl -fsS "http://127.0.0.1:$1/a2a" -H 'content-type: application/json' -H 'a2a-version: 1.0' \
    -H "authorization: Bearer $TOKEN" \
    -d '{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{"message":{"messageId":"bench-get-'"$1"'","role":"ROLE_USER","parts":[{"text":"hello"}]}}}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["result"]["task"]["id"])'
}
ours_task=$(task_of "$ours_http")
py_task=$(task_of "$py_http")

bench() { # name server-label url lua [env...]
  local name=$1 label=$2 url=$3 lua=$4 out
  shift 4
  out=$(env "$@" wrk -t"$threads" -c"$connections" -d"$duration" --latency -s "$here/$lua" "$url" 2>"$work/wrk.err")
  local rps p50 p99 errors
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  errors=$(grep -c '^status' "$work/wrk.err" || true)
  printf '%-22s %-10s %10s req/s  p50 %8s  p99 %8s  failed %s\n' "$name" "$label" "$rps" "$p50" "$p99" "$errors"
}

echo "wrk -t$threads -c$connections -d$duration, loopback, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), SDK store ${SDK_STORE:-sqlite}, ours on ${ours_db%%:*}"
for target in "liquid $ours_http $ours_task" "a2a-sdk $py_http $py_task"; do
  read -r label port task <<<"$target"
  bench SendMessage "$label" "http://127.0.0.1:$port/a2a" send.lua TOKEN="$TOKEN"
  bench SendStreamingMessage "$label" "http://127.0.0.1:$port/a2a" send.lua TOKEN="$TOKEN" METHOD=SendStreamingMessage
  bench GetTask "$label" "http://127.0.0.1:$port/a2a/rest/tasks/$task" get.lua TOKEN="$TOKEN"
  bench agent-card "$label" "http://127.0.0.1:$port/.well-known/agent-card.json" get.lua
done
