#!/usr/bin/env bash
# Copies into deploy/k8s/base/files what its ConfigMaps are generated from (the config template, the alert rules,
# the dashboards) and writes the Operator overlay's PrometheusRule from the rules. kustomize reads no
# file outside the kustomization's folder unless told --load-restrictor=LoadRestrictionsNone, so the
# copies live here and `kubectl apply -k deploy/k8s` works as it is. Run this after changing
# deploy/shadowtap.example.yaml, deploy/prometheus/rules/ or grafana/dashboards/; a test fails while
# a copy differs from its source.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
mkdir -p "$here/base/files/dashboards"
cp "$root/deploy/shadowtap.example.yaml" "$here/base/files/shadowtap.yaml"
cp "$root/deploy/prometheus/rules/shadowtap.rules.yml" "$here/base/files/shadowtap.rules.yml"
rm -f "$here/base/files/dashboards/"*.json
cp "$root/grafana/dashboards/"*.json "$here/base/files/dashboards/"
python3 - "$root/deploy/prometheus/rules/shadowtap.rules.yml" "$here/operator/prometheusrule.yaml" <<'PY'
import sys
import yaml

rules = yaml.safe_load(open(sys.argv[1]))
doc = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PrometheusRule",
    "metadata": {
        "name": "shadowtap",
        "labels": {"app.kubernetes.io/part-of": "shadowtap", "release": "kube-prometheus-stack"},
    },
    "spec": {"groups": rules["groups"]},
}
with open(sys.argv[2], "w") as out:
    out.write("# Written by deploy/k8s/sync.sh from deploy/prometheus/rules/shadowtap.rules.yml: edit that, not this.\n")
    yaml.safe_dump(doc, out, sort_keys=False, width=120)
PY
echo "deploy/k8s: base/files/ and operator/prometheusrule.yaml match their sources"
