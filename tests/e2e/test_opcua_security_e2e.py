"""Secure end to end on real parts: `cellgate sim --security` (a process, user database) -> `cellgate run` (a
process, DEBUG logs, secrets from systemd-style credentials) -> Mosquitto with a password -> subscriber.

The operator's path: the first start rejects the unknown server (rejected/, the error names the command),
`cellgate pki list` shows it, `cellgate pki trust` trusts it, values flow over Aes256_Sha256_RsaPss /
SignAndEncrypt, and the device's event link (its own session, same login) connects too. Then every captured
line (gateway DEBUG log, simulator output, CLI output, every MQTT payload, both command lines) is searched for
every secret: both passwords and the gateway's private key.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.support.mosquitto import Mosquitto, Subscriber
from tests.support.sim import SimulatorProcess

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
MQTT_PASSWORD = "mqtt-Pw-" + uuid.uuid4().hex
OPCUA_PASSWORD = "opcua-Pw-" + uuid.uuid4().hex
GATEWAY_ID = "gw-secure"

TAG_MAP = """\
gateway: {{id: {gateway_id}, enterprise: {enterprise}, site: lab}}
mqtt:
  url: {mqtt_url}
  username: gw
  password_file: mqtt-password
devices:
  - name: coater-01
    area: electrode
    line: cathode-1
    protocol: opcua
    endpoint: '{endpoint}'
    namespace: 'urn:cellgate:simulators'
    interval_ms: 250
    timeout_ms: 3000
    username: operator
    password_file: opcua-password
    security: {{policy: auto, mode: SignAndEncrypt}}
    tags:
      - {{name: identification/manufacturer, node: s=Coater01.Identification.Manufacturer, type: string}}
      - {{name: packml/state_current, node: s=Coater01.PackML.StateCurrent, type: int32}}
      - {{name: result/record_id, node: s=Coater01.Result.RecordId, type: uint32}}
      - {{name: result/ack, node: s=Coater01.Result.Ack, type: uint32}}
    # The events' own OPC UA session (gateway.events.opcua_link): same channel, trust list and login.
    events:
      roll:
        trigger: {{tag: result/record_id, on: change}}
        record: [result/record_id]
        ack: {{tag: result/ack, value: record_id}}
"""


def cellgate(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_secure_pipeline_trusts_on_command_and_leaks_no_secret(tmp_path: Path) -> None:
    workdir = tmp_path
    credentials = workdir / "credentials"  # what systemd's LoadCredential= makes: $CREDENTIALS_DIRECTORY
    credentials.mkdir(mode=0o700)
    (credentials / "mqtt-password").write_text(MQTT_PASSWORD + "\n")
    (credentials / "opcua-password").write_text(OPCUA_PASSWORD + "\n")
    users = workdir / "sim-users"
    users.write_text(f"operator:{OPCUA_PASSWORD}\n")
    state_dir = workdir / "state"
    enterprise = f"sec{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(credentials), "PYTHONUNBUFFERED": "1"}
    captured: list[str] = []

    with Mosquitto(users={"gw": MQTT_PASSWORD}) as broker, SimulatorProcess(
        only="opcua", opcua_port=0, extra_args=["--security", str(workdir / "sim-pki"), "--users-file", str(users)]
    ) as sim:
        config = workdir / "map.yaml"
        config.write_text(
            TAG_MAP.format(
                gateway_id=GATEWAY_ID, enterprise=enterprise, mqtt_url=broker.url, endpoint=sim.opcua_endpoint
            )
        )
        subscriber = Subscriber("127.0.0.1", broker.port, f"{enterprise}/#", username="gw", password=MQTT_PASSWORD)
        subscriber.start()
        log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed below
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "-c", str(config), "--state-dir", str(state_dir),
             "--log-format", "json", "--log-level", "DEBUG"],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            command_lines = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                             for pid in (gateway.pid, sim.pid) if pid is not None]  # fmt: skip

            def log_text() -> str:
                log.seek(0)
                return log.read()

            # First start: the simulator's certificate is unknown, so nothing is read and it lands in rejected/.
            wait_for(lambda: "cellgate pki trust" in log_text(), "the rejection naming `cellgate pki trust`")
            listing = cellgate("pki", "list", "--state-dir", str(state_dir), env=env)
            assert listing.returncode == 0, listing.stderr
            rejected_block = listing.stdout.split("rejected/ (1)\n", 1)[1]
            thumb = rejected_block.split()[0]
            assert "urn:cellgate:simulators:opcua-server" in rejected_block
            assert not [m for m in subscriber.messages if "/coater-01/" in m.topic and b'"good"' in m.payload]

            untrusted = cellgate("check", "-c", str(config), "--state-dir", str(state_dir), env=env)
            assert untrusted.returncode == 0, untrusted.stderr
            assert f"refused: server Cellgate equipment simulators at {sim.opcua_endpoint}" in untrusted.stdout
            assert f"certificate {thumb} is not trusted" in untrusted.stdout
            trusted = cellgate("pki", "trust", thumb, "--state-dir", str(state_dir), env=env)
            assert trusted.returncode == 0, trusted.stderr

            def manufacturer_published() -> bool:
                return any(m.topic.endswith("/coater-01/identification/manufacturer") and m.payload
                           for m in subscriber.messages)  # fmt: skip

            wait_for(manufacturer_published, "a value over the secure channel after `pki trust`")
            # After failed attempts the up line waits until the link is stable (STABLE_LINK_S).
            wait_for(lambda: '"opcua_link_up"' in log_text(), "opcua_link_up")
            up = [orjson.loads(line) for line in log_text().splitlines() if '"opcua_link_up"' in line]
            assert up[-1]["security_policy"] == "Aes256_Sha256_RsaPss"
            assert up[-1]["security_mode"] == "SignAndEncrypt"
            # The event link refused the unknown server the same way, and logs in over the channel once trusted.
            events_down = [orjson.loads(line) for line in log_text().splitlines() if '"events_link_down"' in line]
            assert any(f"cellgate pki trust {thumb}" in entry["error"] for entry in events_down), events_down
            wait_for(lambda: '"events_link_up"' in log_text(), "the event link's secure session (events_link_up)")

            show = cellgate("pki", "show", "--state-dir", str(state_dir), env=env)
            assert f"urn:{os.uname().nodename}:cellgate:{GATEWAY_ID}" in show.stdout
            check = cellgate("check", "-c", str(config), "--state-dir", str(state_dir), env=env)
            assert check.returncode == 0, check.stderr
            assert ("Aes256_Sha256_RsaPss SignAndEncrypt server urn:cellgate:simulators:opcua-server; "
                    f"certificate {thumb} trusted") in check.stdout  # fmt: skip
            captured += [listing.stdout, listing.stderr, trusted.stdout, show.stdout, check.stdout, check.stderr,
                         untrusted.stdout, untrusted.stderr]  # fmt: skip
            captured += command_lines
        finally:
            gateway.terminate()
            gateway.wait(timeout=20)
            captured.append(log_text())
            log.close()
            subscriber.stop()
        captured += [m.topic + " " + m.payload.decode("utf-8", "replace") for m in subscriber.messages]
        captured.append(sim.stderr_text())

    key_pem = (state_dir / "pki" / "own" / "private" / "key.pem").read_text()
    key_lines = [line for line in key_pem.splitlines() if line and not line.startswith("-----")]
    secrets = {"mqtt password": MQTT_PASSWORD, "opcua password": OPCUA_PASSWORD}
    secrets.update({f"private key line {n}": line for n, line in enumerate(key_lines)})
    text = "\n".join(captured)
    assert len(text.splitlines()) > 50  # DEBUG logging really captured the run
    leaks = [name for name, secret in secrets.items() if secret in text]
    assert leaks == []
