#!/usr/bin/env python3
"""Validates one `helm template` output offline.

Every Kubernetes object goes through `kubernetes-validate --strict` (the schemas ship in the
package). ServiceMonitor (monitoring.coreos.com/v1) is a Prometheus Operator CRD that
kubernetes-validate has no schema for: instead of letting it pass with a warning, this script
says so and checks the fields the Operator needs itself: a selector that matches a Service of the
same render, and endpoints naming a port that Service has, with a path and a valid interval.
Any other kind without a schema is an error, not a warning.

usage: helm-validate.py RENDERED.yaml [--kube-version 1.35.0]
"""

import argparse
import collections
import re
import subprocess
import sys
import tempfile

import yaml

CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")


def check_service_monitor(doc, services):
    """Returns the problems of one ServiceMonitor (empty when it is fine)."""
    problems = []
    name = doc.get("metadata", {}).get("name") or "<unnamed>"
    spec = doc.get("spec") or {}
    allowed = {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels",
               "sampleLimit", "targetLimit", "attachMetadata", "scrapeProtocols", "labelLimit",
               "labelNameLengthLimit", "labelValueLengthLimit", "keepDroppedTargets", "bodySizeLimit",
               "scrapeClass", "fallbackScrapeProtocol", "serviceDiscoveryRole", "selectorMechanism",
               "nativeHistogramBucketLimit", "nativeHistogramMinBucketFactor",
               "scrapeClassicHistograms", "convertClassicHistogramsToNHCB"}
    for key in spec:
        if key not in allowed:
            problems.append(f"servicemonitor/{name}: unknown field spec.{key}")
    match = (spec.get("selector") or {}).get("matchLabels") or {}
    if not match:
        problems.append(f"servicemonitor/{name}: spec.selector.matchLabels is empty (would select every Service)")
    selected = [s for s in services
                if match and all((s.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in match.items())]
    if match and not selected:
        problems.append(f"servicemonitor/{name}: selector {match} matches no Service in this render")
    endpoints = spec.get("endpoints") or []
    if not endpoints:
        problems.append(f"servicemonitor/{name}: spec.endpoints is empty")
    for i, ep in enumerate(endpoints):
        port = ep.get("port")
        if not port:
            problems.append(f"servicemonitor/{name}: endpoints[{i}].port missing")
        for svc in selected:
            names = {p.get("name") for p in (svc.get("spec", {}).get("ports") or [])}
            if port and port not in names:
                problems.append(f"servicemonitor/{name}: endpoints[{i}].port {port!r} is not a port of "
                                f"service/{svc['metadata']['name']} ({sorted(n for n in names if n)})")
        if not str(ep.get("path", "/metrics")).startswith("/"):
            problems.append(f"servicemonitor/{name}: endpoints[{i}].path must start with /")
        for field in ("interval", "scrapeTimeout"):
            if field in ep and not DURATION.match(str(ep[field])):
                problems.append(f"servicemonitor/{name}: endpoints[{i}].{field} {ep[field]!r} is not a duration")
    return problems


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("rendered")
    parser.add_argument("--kube-version", default="1.35.0")
    args = parser.parse_args()

    with open(args.rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    plain, crds, kinds = [], [], collections.Counter()
    for doc in docs:
        if not isinstance(doc, dict):
            print(f"ERROR {args.rendered}: a document is not a mapping: {str(doc)[:80]!r}")
            return 1
        key = (doc.get("apiVersion"), doc.get("kind"))
        kinds[key[1]] += 1
        (crds if key in CRD_KINDS else plain).append(doc)

    failed = False
    if plain:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as tmp:
            yaml.safe_dump_all(plain, tmp, sort_keys=False)
            tmp.flush()
            run = subprocess.run(
                ["kubernetes-validate", "--strict", "--quiet", "-k", args.kube_version, tmp.name],
                capture_output=True, text=True)
        out = (run.stdout + run.stderr).replace(tmp.name, args.rendered).strip()
        if out:
            print(out)
        # An object kubernetes-validate has no schema for is only a warning there; here it fails.
        if run.returncode != 0 or "Couldn't find schema" in out:
            failed = True

    services = [d for d in plain if d.get("kind") == "Service"]
    for doc in crds:
        for problem in check_service_monitor(doc, services):
            print(f"ERROR {args.rendered}: {problem}")
            failed = True
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    note = ""
    if crds:
        note = (f"; {len(crds)} ServiceMonitor not in kubernetes-validate's schemas (a Prometheus "
                f"Operator CRD): checked here for selector, Service match, port, path, interval instead")
    print(f"    {'FAILED' if failed else 'valid'}: {summary}{note}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
