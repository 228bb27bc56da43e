#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh machine, then runs the whole suite.
# Python deps (pip), a real Apache Kafka from Maven Central (deploy/kafka.sh); the Kafka broker itself
# is started and stopped by the test fixtures through deploy/kafka.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing shadowtap and test dependencies"
python3 -m pip install --disable-pip-version-check -q -e '.[test]'

echo "== installing Apache Kafka (cached after the first run)"
bash deploy/kafka.sh install

echo "== installing Prometheus and Alertmanager (Debian packages; their services stay off)"
bash deploy/observability.sh install

echo "== kustomize (the k8s manifests are built as \`kubectl apply -k\` builds them)"
if ! command -v kustomize >/dev/null && ! command -v kubectl >/dev/null && [ ! -x .cache/bin/kustomize ]; then
  # From the Go module proxy (kustomize v5.4 needs Go 1.21 or later).
  if command -v go >/dev/null; then
    GOBIN="$PWD/.cache/bin" go install sigs.k8s.io/kustomize/kustomize/v5@v5.4.3 \
      || echo "kustomize could not be built: the kustomize build test will be skipped"
  else
    echo "no Go toolchain: the kustomize build test will be skipped"
  fi
fi

echo "== installing Chromium (the HTML report is opened in a real browser)"
command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

echo "== format, lint, types (scripts/check)"
bash scripts/check

echo "== tests"
exec python3 -m pytest -q -p no:cacheprovider "$@"
