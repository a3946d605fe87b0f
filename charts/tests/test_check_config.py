"""The worker accepts what the chart renders: `hyperlight-js-worker check-config` on the
worker.toml of every render (default values and each tests/values-*.yaml).

The worker binary is built here with `cargo build -p hyperlight-js-worker --bin
hyperlight-js-worker` (debug; CI built the workspace before, so this is quick). Nothing is
skipped: without cargo, or if the build fails, these tests fail.

The ConfigMap is written out as the pod sees it at /etc/hyperlight-js-worker: worker.toml and
every other key of the ConfigMap next to it. The chart keeps all handler code in that ConfigMap
(a handler's `source`, or a file of `extraFiles`; the render fails when a handler has neither), so
no stub handler files are needed. check-config then runs with the Deployment's environment: its
literal `value`s (HLJS__HTTP__LISTEN, HLJS__SHUTDOWN__DRAIN_TIMEOUT_SECS, extraEnv) and AMQP_URL
from the Secret when the chart renders that Secret (amqp.url). A Secret the user manages cannot
be read here, so AMQP_URL stays unset then (JSON-lines mode: every other check is the same).
"""

import base64
import json
import os
import pathlib
import shutil
import subprocess
import tomllib

import pytest

from conftest import REPO, TESTS, render

CONFIG_DIR = "etc/hyperlight-js-worker"
VARIANTS = ["default"] + sorted(p.name for p in TESTS.glob("values-*.yaml"))


def _helm():
    helm = os.environ.get("HLJS_HELM4") or os.environ.get("HLJS_HELM3")
    if not helm:
        pytest.fail("set HLJS_HELM4 or HLJS_HELM3 (charts/ci-check.sh does)")
    # charts/ci-check.sh has already required Helm 3 and Helm 4 to render the same manifests.
    return helm


@pytest.fixture(scope="session")
def worker_bin():
    cargo = os.environ.get("CARGO") or shutil.which("cargo")
    if not cargo:
        home_cargo = pathlib.Path.home() / ".cargo" / "bin" / "cargo"
        cargo = str(home_cargo) if home_cargo.exists() else None
    if not cargo:
        pytest.fail("cargo not found: the worker binary is needed to check the rendered config")
    proc = subprocess.run(
        [cargo, "build", "-p", "hyperlight-js-worker", "--bin", "hyperlight-js-worker",
         "--message-format=json-render-diagnostics"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        pytest.fail(f"cargo build -p hyperlight-js-worker failed (exit {proc.returncode})")
    exe = None
    for line in proc.stdout.splitlines():
        msg = json.loads(line)
        if (msg.get("reason") == "compiler-artifact"
                and msg["target"]["name"] == "hyperlight-js-worker"
                and "bin" in msg["target"]["kind"] and msg.get("executable")):
            exe = msg["executable"]
    if not exe or not os.path.exists(exe):
        pytest.fail(f"cargo build did not report the hyperlight-js-worker binary: {proc.stdout}")
    return exe


def _pod_env(m):
    """The worker container's environment as far as the manifests fix it."""
    secrets = {s["metadata"]["name"]: s for s in m.all("Secret")}
    env = {}
    unresolved = []
    for e in m.container.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
            continue
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        secret = secrets.get(ref["name"]) if ref else None
        if secret is not None:
            if ref["key"] in secret.get("data", {}):
                env[e["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
            else:
                env[e["name"]] = secret["stringData"][ref["key"]]
        else:
            unresolved.append(e["name"])
    return env, unresolved


def _write_config(m, root):
    """The config directory as the pod mounts it; returns the worker.toml path."""
    cm = m.one("ConfigMap")
    config_dir = root / CONFIG_DIR
    config_dir.mkdir(parents=True)
    for name, content in cm["data"].items():
        (config_dir / name).write_text(content, encoding="utf-8")
    cfg = tomllib.loads(cm["data"]["worker.toml"])
    for h in cfg["handlers"]:
        # Every file worker.toml names is in the ConfigMap (no stubs needed, see above).
        assert h["file"] in cm["data"], f"handler {h['key']}: {h['file']} not in the ConfigMap"
    return config_dir / "worker.toml", cfg


def _check_config(bin_path, config, env):
    # Only the pod's environment: no HLJS__* or AMQP_URL of the machine running the tests.
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RUST_LOG": "warn"}
    full_env.update(env)
    return subprocess.run([bin_path, "check-config", "--config", str(config)],
                          env=full_env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_worker_accepts_every_rendered_config(worker_bin, tmp_path, variant):
    files = () if variant == "default" else (variant,)
    m = render(_helm(), *files)
    env, unresolved = _pod_env(m)
    assert {"HLJS__HTTP__LISTEN", "HLJS__SHUTDOWN__DRAIN_TIMEOUT_SECS"} <= set(env)
    if m.maybe("ConfigMap") is None:
        # existingConfigMap: the user's ConfigMap is not part of the render. Stand in for it with
        # the repository's example config to check the environment overrides the Deployment
        # sets on every config.
        assert any("configMap" in v for v in m.pod["volumes"])
        config_dir = tmp_path / CONFIG_DIR
        shutil.copytree(REPO / "examples" / "handlers", config_dir / "handlers")
        shutil.copy(REPO / "examples" / "worker.toml", config_dir / "worker.toml")
        config = config_dir / "worker.toml"
        keys = [h["key"] for h in tomllib.loads(config.read_text())["handlers"]]
    else:
        config, cfg = _write_config(m, tmp_path)
        keys = [h["key"] for h in cfg["handlers"]]
    proc = _check_config(worker_bin, config, env)
    assert proc.returncode == 0, f"check-config {variant}: {proc.stderr}{proc.stdout}"
    (line,) = proc.stdout.splitlines()
    assert f"{len(keys)} handler(s) compiled ({', '.join(keys)})" in line, line
    if "AMQP_URL" in unresolved:
        assert "broker none" in line, line
    else:
        assert "broker amqp" in line and "***@" in line, line


@pytest.mark.parametrize(
    "values, code, needles",
    [
        # In the schema's ranges, but over its maximum: only the worker sees both keys.
        ({"handlers": [{"key": "greet", "cpu_timeout_ms": 9000,
                        "source": "function handler(e) { return e; }"}]},
         "ERR_CONFIG_INVALID", ["'greet'", "max_cpu_timeout_ms"]),
        # A retry_on code the engine does not know.
        ({"handlers": [{"key": "greet", "retry_on": ["ERR_CANCELED"],
                        "source": "function handler(e) { return e; }"}]},
         "ERR_CONFIG_INVALID", ["'greet'", "ERR_CANCELED"]),
        # JavaScript that does not compile.
        ({"handlers": [{"key": "broken", "source": "function handler(e) { return e;"}]},
         "ERR_COMPILE", ["'broken'", "broken.js"]),
    ],
    ids=["timeout-over-max", "unknown-retry-code", "compile-error"],
)
def test_check_config_catches_what_the_schema_cannot(worker_bin, tmp_path, values, code,
                                                     needles):
    m = render(_helm(), values=values)
    config, _ = _write_config(m, tmp_path)
    env, _ = _pod_env(m)
    proc = _check_config(worker_bin, config, env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"error[{code}]: "), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
