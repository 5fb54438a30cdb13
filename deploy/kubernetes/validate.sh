#!/usr/bin/env bash
# `make k8s-validate`: render the base and every overlay with `kubectl kustomize`, then validate each object
# against Kubernetes' own OpenAPI schemas, strictly (an unknown or misspelt field fails), offline: the schemas
# ship inside the pinned kubernetes-validate. No cluster is needed or contacted.
#
#   deploy/kubernetes/validate.sh            # PY=.venv/bin/python by default; installs what it lacks
#
# Validated against the oldest Kubernetes release still commonly run and the newest the schemas know. The
# ServiceMonitor is a custom resource with no schema there: it is rendered but only its kind is checked.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
KUBERNETES_VALIDATE=kubernetes-validate==1.37.0
VERSIONS=${K8S_VERSIONS:-1.29.0 1.37.0}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

# Debian's kubernetes-client (kubectl 1.20, kustomize v2) is enough: the kustomizations are written for it.
if ! command -v kubectl >/dev/null; then
    echo "installing kubectl (Debian's kubernetes-client)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >/dev/null
fi
"$PY" -m pip show -q kubernetes-validate 2>/dev/null | grep -qx "Version: ${KUBERNETES_VALIDATE#*==}" \
    || "$PY" -m pip install -q "$KUBERNETES_VALIDATE"
VALIDATE=("$PY" -m kubernetes_validate)
"$PY" -c 'import kubernetes_validate' 2>/dev/null || VALIDATE=("$(dirname "$PY")/kubernetes-validate")

failed=0
for dir in deploy/kubernetes/base deploy/kubernetes/overlays/*/; do
    dir=${dir%/}
    name=$(basename "$dir")
    if ! kubectl kustomize "$dir" >"$OUT/$name.yaml" 2>"$OUT/$name.err"; then
        echo "FAIL  $dir: kubectl kustomize"; cat "$OUT/$name.err"; failed=1; continue
    fi
    kinds=$(grep -E '^kind: ' "$OUT/$name.yaml" | cut -d' ' -f2 | sort | tr '\n' ' ')
    for kind in Deployment Service HorizontalPodAutoscaler PodDisruptionBudget ConfigMap Secret; do
        [[ " $kinds" == *" $kind "* ]] || { echo "FAIL  $dir: no $kind rendered"; failed=1; }
    done
    for version in $VERSIONS; do
        if ! "${VALIDATE[@]}" --strict --quiet -k "$version" "$OUT/$name.yaml" >"$OUT/$name.log" 2>&1; then
            echo "FAIL  $dir against Kubernetes $version:"; cat "$OUT/$name.log"; failed=1; continue
        fi
        # A warning is a kind without a schema: only the ServiceMonitor may be one.
        if grep -v 'kind ServiceMonitor with api version monitoring.coreos.com/v1' "$OUT/$name.log" | grep -q .; then
            echo "FAIL  $dir against Kubernetes $version:"; cat "$OUT/$name.log"; failed=1; continue
        fi
        echo "ok    $dir against Kubernetes $version: $kinds"
    done
done
[ "$failed" = 0 ] && echo "all manifests render and validate"
exit "$failed"
