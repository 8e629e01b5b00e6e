#!/usr/bin/env bash
# Runs the public A2A conformance kit (a2aproject/a2a-tck, branch 1.0-dev) against the a2a
# service, locally. The kit is not part of this repository and is never committed: clone it
# yourself and pass its directory.
#
#   git clone -b 1.0-dev https://github.com/a2aproject/a2a-tck /tmp/a2a-tck
#   (cd /tmp/a2a-tck && python3 -m venv .venv && .venv/bin/pip install -e .)
#   cargo build -p liquid-a2a-service
#   services/a2a/tests/tck/run.sh /tmp/a2a-tck [extra run_tck.py arguments]
#
# The service runs from the build (CARGO_TARGET_DIR, default ~/.cache/liquid/target/debug) on a
# fresh SQLite file with the `tck` profile and the settings the kit assumes:
#   - error table 1.0.0: the kit checks the mapping table of spec v1.0.0 (it vendors that spec);
#   - idempotent_message_ids = false: the kit sends one messageId per scenario for the whole run
#     (`tck-<scenario>-<session>`), which a deduplicating server (spec §3.3.1 MAY) answers with
#     the first task instead of a new one;
#   - push.allow_loopback: the kit's webhook receiver listens on localhost.
# Every operation needs a token: a development HS256 secret is configured and the kit's HTTP and
# gRPC calls get `Authorization: Bearer ...` from liquid_auth_plugin.py (nothing else changes).
# Reports land in the kit's reports/ directory.
set -euo pipefail
tck=${1:?usage: run.sh A2A_TCK_DIR [run_tck.py arguments]}
shift
here=$(cd "$(dirname "$0")" && pwd)
bin="${CARGO_TARGET_DIR:-$HOME/.cache/liquid/target}/debug/liquid-a2a-service"
[ -x "$bin" ] || { echo "run.sh: $bin is not built; cargo build -p liquid-a2a-service" >&2; exit 1; }
http_port=${TCK_HTTP_PORT:-18081}
grpc_port=${TCK_GRPC_PORT:-19081}
secret=liquid-tck-development-secret-$(date +%s)-padding
work=$(mktemp -d)

export LIQUID_A2A__SERVER__HTTP_ADDR=127.0.0.1:$http_port
export LIQUID_A2A__SERVER__GRPC_ADDR=127.0.0.1:$grpc_port
export LIQUID_A2A__DATABASE__URL=sqlite://$work/a2a.db
export LIQUID_A2A__A2A__PROFILE=${TCK_PROFILE:-tck}
export LIQUID_A2A__A2A__PUBLIC_GRPC_URL=127.0.0.1:$grpc_port
export LIQUID_A2A__A2A__ERROR_TABLE=1.0.0
export LIQUID_A2A__A2A__IDEMPOTENT_MESSAGE_IDS=false
export LIQUID_A2A__PUSH__ALLOW_LOOPBACK=true
export LIQUID_A2A__AUTH__ALLOW_HS256_DEV=true
export LIQUID_A2A__AUTH__HS256_SECRET=$secret
export LIQUID_A2A__TELEMETRY__LOG_FILTER=warn
"$bin" >"$work/service.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$http_port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

LIQUID_TCK_TOKEN=$(python3 - "$secret" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=")
now = int(time.time())
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": "tck", "tenant": "tck", "iss": "liquid", "aud": "liquid",
                       "iat": now, "exp": now + 7200, "scope": "a2a:*"}).encode())
sig = b64(hmac.new(sys.argv[1].encode(), head + b"." + body, hashlib.sha256).digest())
print((head + b"." + body + b"." + sig).decode())
PY
)
export LIQUID_TCK_TOKEN
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
cd "$tck"
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python
"$python" run_tck.py --sut-host "http://127.0.0.1:$http_port" "$@" -- -p liquid_auth_plugin -q -rfE
