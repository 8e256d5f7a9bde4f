"""The container recipe, as far as it can be checked without a container engine (none runs on these machines and
no base image can be pulled): its health check run for real against a running gateway, and its build context,
user, volume and command checked against the repository and the command line they rely on."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import build_parser
from gateway.healthcheck import healthz_url
from tests.support.gateway import REPO_ROOT, GatewayProcess, retarget_demo_config
from tests.support.sim import free_port_run, free_tcp_port

CONTAINERFILE = REPO_ROOT / "Containerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Containerfile, continuation lines joined, comments left out."""
    joined: list[str] = []
    pending = ""
    for line in CONTAINERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip().removesuffix("\\") + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            joined.append(pending)
            pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1].strip()) for text in joined]


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(index for index, (name, _) in enumerate(steps) if name == "FROM")
    return steps[last_from:]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for name, arguments in final_stage():
        if name == "ENV":
            env.update(part.split("=", 1) for part in shlex.split(arguments))
    return env


def health_command() -> list[str]:
    (arguments,) = [arguments for name, arguments in final_stage() if name == "HEALTHCHECK"]
    assert " CMD " in f" {arguments}", arguments
    command = json.loads(arguments.split("CMD", 1)[1])  # exec form: no shell in the probe
    assert command[0] == "python", command  # the venv's python: PATH starts with /opt/cellgate/venv/bin
    assert image_env()["PATH"].startswith("/opt/cellgate/venv/bin:")
    return [sys.executable, *command[1:]]


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        ("127.0.0.1:9108", "http://127.0.0.1:9108/healthz"),
        ("0.0.0.0:9108", "http://127.0.0.1:9108/healthz"),
        ("[::]:9200", "http://[::1]:9200/healthz"),
        ("[::1]:9108", "http://[::1]:9108/healthz"),
        ("localhost:1", "http://localhost:1/healthz"),
    ],
)
def test_the_probe_asks_the_listener_on_a_loopback_address(listen: str, url: str) -> None:
    assert healthz_url(listen) == url


def probe(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("CELLGATE_")}
    return subprocess.run(health_command(), env={**clean, **env}, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60)


def test_the_health_check_of_the_containerfile_passes_on_a_running_gateway_only(tmp_path: Path) -> None:
    """The HEALTHCHECK command as written, with the image's listener moved to a free port and a bearer token:
    healthy while the gateway runs (no PLC or broker needed: /healthz is about the process), unhealthy with a
    wrong token and once the gateway has stopped; one line on stderr each time."""
    image_listen = image_env()["CELLGATE_HTTP__LISTEN"]
    assert image_listen.startswith("127.0.0.1:")  # loopback inside the container: no token required
    listen = f"127.0.0.1:{free_tcp_port()}"
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    config = retarget_demo_config(
        opcua_port=free_tcp_port(), modbus_port=free_port_run(3), destination=tmp_path / "tagmap.yaml"
    )
    env = {"CELLGATE_HTTP__LISTEN": listen, "CELLGATE_HTTP__TOKEN_FILE": str(token)}
    gateway = GatewayProcess(
        config=config, state_dir=tmp_path / "state",
        env={**env, "CELLGATE_MQTT__URL": f"mqtt://127.0.0.1:{free_tcp_port()}"},
    )
    gateway.start()
    try:
        gateway.wait_for_event("http_listening", timeout_s=60)
        healthy = probe(env)
        assert healthy.returncode == 0, healthy.stderr
        wrong = tmp_path / "wrong"
        wrong.write_text("not-the-token")
        refused = probe({**env, "CELLGATE_HTTP__TOKEN_FILE": str(wrong)})
        assert refused.returncode == 1 and "HTTP 401" in refused.stderr and refused.stderr.count("\n") == 1
    finally:
        gateway.close()
    stopped = probe(env)
    assert stopped.returncode == 1 and listen in stopped.stderr and stopped.stderr.count("\n") == 1
    assert "Traceback" not in stopped.stderr


def test_the_image_runs_the_gateway_as_a_non_root_user_with_state_on_a_volume_and_config_under_etc() -> None:
    steps = final_stage()
    (user,) = [arguments for name, arguments in steps if name == "USER"]
    assert user.split(":")[0] not in {"root", "0"}
    (volume,) = [json.loads(arguments) for name, arguments in steps if name == "VOLUME"]
    (entrypoint,) = [json.loads(arguments) for name, arguments in steps if name == "ENTRYPOINT"]
    (command,) = [json.loads(arguments) for name, arguments in steps if name == "CMD"]
    assert entrypoint == ["cellgate"]
    args = build_parser().parse_args(command)  # the command line the image runs is one cellgate accepts
    assert args.command == "run"
    assert args.state_dir in volume and Path(args.config).parent == Path("/etc/cellgate")


def test_every_file_the_containerfile_copies_is_in_the_build_context_and_not_ignored() -> None:
    ignored = {line.strip().strip("/") for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for name, arguments in instructions():
        if name != "COPY" or arguments.startswith("--from="):
            continue
        for source in arguments.split()[:-1]:
            assert (REPO_ROOT / source).exists(), source
            assert source not in ignored, source
    for heavy in (".venv", ".git", "build", "**/__pycache__", "tests/interop/node_modules"):
        assert heavy in ignored, heavy  # never sent to the engine as build context
