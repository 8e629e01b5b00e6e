#!/usr/bin/env bash
# Lints, renders and validates every chart under helm/, offline (no cluster, no chart repository):
#   1. helm dependency build   the file://../ dependencies (liquid-common for each service chart,
#                              the seven service charts for the umbrella `liquid`), copied locally
#   2. helm lint --strict      with the default values and with ci/all-enabled-values.yaml
#   3. helm template           both value sets, for Kubernetes $KUBE_VERSION
#   4. helm-validate.py        kubernetes-validate --strict on every object; ServiceMonitor (a
#                              Prometheus Operator CRD it has no schema for) is checked by the
#                              script itself, and it says so
# Rendered manifests stay in $LIQUID_HELM_OUT (default ~/.cache/liquid/helm) for a look.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${LIQUID_TOOLS_DIR:-$HOME/.cache/liquid/bin}:$PATH"
KUBE_VERSION="${KUBE_VERSION:-1.35.0}"
out="${LIQUID_HELM_OUT:-$HOME/.cache/liquid/helm}"

now() { printf '%s' "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
die() { printf 'helm-lint: %s\n' "$*" >&2; exit 1; }
run() { printf '  $ %s\n' "$*" >&2; "$@"; }

command -v helm >/dev/null || die "helm not found: run 'make deps'"
command -v kubernetes-validate >/dev/null || die "kubernetes-validate not found: run 'make deps'"
echo "==> helm-lint with $(helm version --short), kubernetes-validate $(kubernetes-validate --version), Kubernetes $KUBE_VERSION"
rm -rf "$out"
mkdir -p "$out"
t_all=$(now)
failures=()

SERVICE_CHARTS=(gateway a2a cowork container-pool healer registry media)
for c in "${SERVICE_CHARTS[@]}" liquid liquid-common; do
  [ -f "helm/$c/Chart.yaml" ] || die "helm/$c/Chart.yaml is missing"
done

# The library chart renders nothing by itself; lint checks its syntax.
t0=$(now)
echo "--> liquid-common (library)"
run helm lint --strict helm/liquid-common | grep -v '^$' || failures+=(liquid-common)
echo "    ($(since "$t0"))"

check_chart() {
  local chart=$1 t0 variant values rendered ok=true
  t0=$(now)
  echo "--> $chart"
  run helm dependency build "helm/$chart" >/dev/null || { failures+=("$chart: dependency build"); return; }
  for variant in default all-enabled; do
    values=()
    if [ "$variant" = all-enabled ]; then
      [ -f "helm/$chart/ci/all-enabled-values.yaml" ] || { failures+=("$chart: no ci/all-enabled-values.yaml"); ok=false; continue; }
      values=(-f "helm/$chart/ci/all-enabled-values.yaml")
    fi
    rendered="$out/$chart-$variant.yaml"
    if ! run helm lint --strict --quiet "helm/$chart" "${values[@]}" --kube-version "$KUBE_VERSION"; then
      failures+=("$chart ($variant): helm lint"); ok=false; continue
    fi
    if ! run helm template liquid "helm/$chart" "${values[@]}" --kube-version "$KUBE_VERSION" >"$rendered"; then
      failures+=("$chart ($variant): helm template"); ok=false; continue
    fi
    echo "  $ kubernetes-validate --strict $rendered"
    python3 scripts/helm-validate.py "$rendered" --kube-version "$KUBE_VERSION" ||
      { failures+=("$chart ($variant): validation"); ok=false; }
  done
  echo "    $chart $($ok && echo ok || echo FAILED) ($(since "$t0"))"
}

# Service charts first: the umbrella packs them, each with its liquid-common inside.
for c in "${SERVICE_CHARTS[@]}" liquid; do
  check_chart "$c"
done

if [ ${#failures[@]} -gt 0 ]; then
  printf 'helm-lint: FAILED:\n' >&2
  printf '  %s\n' "${failures[@]}" >&2
  exit 1
fi
echo "==> helm-lint: 9 charts linted, rendered and validated in $(since "$t_all") (manifests in $out)"
