"""The Dockerfile, parsed with BuildKit's own parser (the `dockerfile` package): it builds the
worker the way the workspace needs and its runtime image fits what the chart assumes.

Dockerfile.runtime (the runtime stage from a prebuilt binary, what CI builds and
tests/tests/image.rs runs) must give the image the same user, entrypoint, arguments and port.
"""

import re

import dockerfile
import pytest

from conftest import REPO


def parse_stages(path):
    commands = dockerfile.parse_file(str(path))
    args = {}
    result = []
    for c in commands:
        if c.cmd == "ARG" and not result:
            name, _, default = c.value[0].partition("=")
            args[name] = default
        elif c.cmd == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda mo: args[mo.group(1)], c.value[0])
            name = c.value[2] if len(c.value) == 3 and c.value[1].upper() == "AS" else None
            result.append({"image": image, "name": name, "commands": []})
        else:
            assert result or c.cmd in ("ARG",), f"{c.cmd} before FROM"
            if result:
                result[-1]["commands"].append(c)
    return result


@pytest.fixture(scope="module")
def stages():
    return parse_stages(REPO / "Dockerfile")


def run_text(stage):
    return "\n".join(" ".join(c.value) for c in stage["commands"] if c.cmd == "RUN")


def last(stage, cmd):
    found = [c for c in stage["commands"] if c.cmd == cmd]
    assert found, f"no {cmd} in the {stage['name'] or 'final'} stage"
    return found[-1]


def test_builder_stage_has_the_guest_toolchain(stages):
    builder = stages[0]
    assert builder["image"] == "rust:1.95-bookworm"
    text = run_text(builder)
    assert re.search(r"apt-get install .*\bclang\b.*\blibclang-dev\b.*\bllvm-14\b", text)
    assert "rustup target add x86_64-unknown-none" in text
    assert "rustup component add rust-src" in text
    assert "cargo build --release --locked -p hyperlight-js-worker" in text


def test_runtime_stage_is_small_and_non_root(stages, chart_values):
    assert len(stages) == 2
    runtime = stages[-1]
    assert runtime["image"].startswith("gcr.io/distroless/cc-debian12")
    assert [c.cmd for c in runtime["commands"]].count("RUN") == 0
    (copy,) = [c for c in runtime["commands"] if c.cmd == "COPY"]
    assert copy.flags == ("--from=builder",)
    user, _, group = last(runtime, "USER").value[0].partition(":")
    # The chart's runAsUser/runAsGroup are the image's user, and that user is not root.
    assert int(user) == chart_values["securityContext"]["runAsUser"] != 0
    assert int(group) == chart_values["securityContext"]["runAsGroup"]


def test_entrypoint_and_port_match_the_chart(stages, chart_values):
    runtime = stages[-1]
    entrypoint = last(runtime, "ENTRYPOINT")
    assert entrypoint.json and entrypoint.value == ("/usr/local/bin/hyperlight-js-worker",)
    cmd = last(runtime, "CMD")
    assert cmd.json and cmd.value == ("--config", "/etc/hyperlight-js-worker/worker.toml")
    assert last(runtime, "EXPOSE").value == (str(chart_values["http"]["port"]),)


def test_dockerignore_keeps_the_workspace():
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in ("Cargo.toml", "Cargo.lock", "src", "*"):
        assert needed not in ignored
    assert ".git" in ignored and "**/target" in ignored


def test_dockerfile_runtime_matches_the_runtime_stage(stages):
    (prebuilt,) = parse_stages(REPO / "Dockerfile.runtime")
    assert prebuilt["image"] == "hljs-runtime-base:bookworm"
    assert [c.cmd for c in prebuilt["commands"]].count("RUN") == 0
    (copy,) = [c for c in prebuilt["commands"] if c.cmd == "COPY"]
    assert copy.value == ("hyperlight-js-worker", "/usr/local/bin/hyperlight-js-worker")
    for cmd in ("USER", "ENTRYPOINT", "CMD", "EXPOSE"):
        assert last(prebuilt, cmd).value == last(stages[-1], cmd).value, cmd
