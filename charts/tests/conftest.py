"""Rendering helpers for the chart tests.

charts/ci-check.sh passes the Helm binaries it installed in HLJS_HELM3 and HLJS_HELM4; every
test that takes the `helm` fixture runs once with each. Without them the tests fail (no Helm,
no test).
"""

import os
import pathlib
import subprocess
import tempfile

import pytest
import yaml

CHARTS = pathlib.Path(__file__).resolve().parent.parent
CHART = CHARTS / "hyperlight-js-worker"
TESTS = CHARTS / "tests"
REPO = pathlib.Path(os.environ.get("HLJS_REPO", CHARTS.parent))
RELEASE = "hljs"
NAMESPACE = "workers"
_TEMP_FILES = []


def pytest_sessionfinish(session, exitstatus):
    for path in _TEMP_FILES:
        os.unlink(path)


def _helm_binaries():
    found = {}
    for label, var in (("helm3", "HLJS_HELM3"), ("helm4", "HLJS_HELM4")):
        path = os.environ.get(var)
        if path:
            found[label] = path
    return found


def pytest_generate_tests(metafunc):
    if "helm" in metafunc.fixturenames:
        binaries = _helm_binaries()
        if not binaries:
            raise pytest.UsageError("set HLJS_HELM3 and/or HLJS_HELM4 (charts/ci-check.sh does)")
        metafunc.parametrize("helm", list(binaries.values()), ids=list(binaries.keys()))


class RenderError(Exception):
    pass


class Manifests:
    """The objects of one render, looked up by kind (and name)."""

    def __init__(self, docs):
        self.docs = docs

    def kinds(self):
        return sorted(d["kind"] for d in self.docs)

    def all(self, kind):
        return [d for d in self.docs if d["kind"] == kind]

    def maybe(self, kind):
        found = self.all(kind)
        assert len(found) <= 1, f"more than one {kind}"
        return found[0] if found else None

    def one(self, kind):
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, got {len(found)} (kinds: {self.kinds()})"
        return found[0]

    @property
    def deployment(self):
        return self.one("Deployment")

    @property
    def pod(self):
        return self.deployment["spec"]["template"]["spec"]

    @property
    def container(self):
        containers = self.pod["containers"]
        assert len(containers) == 1
        return containers[0]

    def env(self, name):
        matches = [e for e in self.container.get("env", []) if e["name"] == name]
        assert len(matches) == 1, f"env {name}: {matches}"
        return matches[0]


def _args(values_files, sets, set_strings, values=None):
    args = []
    for f in values_files:
        args += ["--values", str(TESTS / f)]
    if values is not None:
        # A values file rather than --set: --set replaces whole lists and eats backslashes.
        fd, path = tempfile.mkstemp(suffix=".yaml", prefix="hljs-values-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yaml.safe_dump(values, f, allow_unicode=True)
        _TEMP_FILES.append(path)
        args += ["--values", path]
    for k, v in (sets or {}).items():
        args += ["--set", f"{k}={v}"]
    for k, v in (set_strings or {}).items():
        args += ["--set-string", f"{k}={v}"]
    return args


def render(helm, *values_files, values=None, sets=None, set_strings=None):
    """helm template with the given values files (names in charts/tests), then `values` (a
    dict), then --set pairs."""
    cmd = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    cmd += _args(values_files, sets, set_strings, values)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RenderError(proc.stderr)
    return Manifests([d for d in yaml.safe_load_all(proc.stdout) if d])


def render_fails(helm, *values_files, values=None, sets=None, set_strings=None):
    """Renders expecting failure; returns Helm's error text."""
    with pytest.raises(RenderError) as err:
        render(helm, *values_files, values=values, sets=sets, set_strings=set_strings)
    return str(err.value)


def lint_fails(helm, *values_files, values=None, sets=None, set_strings=None):
    """helm lint --strict expecting failure; returns Helm's output."""
    cmd = [helm, "lint", "--strict", str(CHART)]
    cmd += _args(values_files, sets, set_strings, values)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode != 0, f"helm lint passed: {proc.stdout}"
    return proc.stdout + proc.stderr


def notes(*values_files, sets=None):
    """NOTES.txt as `helm install --dry-run=client` prints it (Helm 4 needs no cluster for it)."""
    helm = os.environ.get("HLJS_HELM4")
    if not helm:
        pytest.fail("HLJS_HELM4 is needed to render NOTES.txt")
    cmd = [helm, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"]
    cmd += _args(values_files, sets, None)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "NOTES:" in proc.stdout
    return proc.stdout.split("NOTES:", 1)[1]


@pytest.fixture(scope="session")
def chart_values():
    with open(CHART / "values.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f)
