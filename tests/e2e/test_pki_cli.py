"""`cellgate pki ...`, and `cellgate check` / `run` refusing unreadable security files (exit 2, no traceback).

Real processes (`python -m gateway.cli`); nothing listens on the OPC UA endpoint, so `check` runs with
--offline and `run` must refuse before it tries to connect.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.pki import Pki, application_uri, make_certificate, new_key, write_private_key
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
TAG_MAP = """\
gateway: {{id: gw-pki, enterprise: acme, site: lab}}
mqtt: {{url: 'mqtt://127.0.0.1:9'}}
devices:
  - name: coater-01
    area: electrode
    line: cathode-1
    protocol: opcua
    endpoint: 'opc.tcp://127.0.0.1:9'
    security: {{mode: Sign}}
    {extra}
    tags:
      - {{name: t, node: 'ns=2;s=X', type: float64}}
"""


def cellgate(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, **(env or {})}, check=False,
    )  # fmt: skip


def write_map(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "map.yaml"
    path.write_text(TAG_MAP.format(extra=extra))
    return path


def test_show_renew_and_trust_of_an_unknown_thumbprint(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = write_map(tmp_path)
    empty = cellgate("pki", "show", "--state-dir", str(state), cwd=tmp_path)
    assert empty.returncode == 0 and "no certificate yet" in empty.stdout
    refused = cellgate("pki", "renew", "--state-dir", str(state), cwd=tmp_path)
    assert refused.returncode == 2 and "-c" in refused.stderr
    first = cellgate("pki", "renew", "-c", str(config), "--state-dir", str(state), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    pki = Pki(state / "pki", uri=application_uri("gw-pki"))
    before = pki.own()
    shown = cellgate("pki", "show", "--state-dir", str(state), cwd=tmp_path)
    assert before.thumbprint in shown.stdout and application_uri("gw-pki") in shown.stdout
    assert f"{before.not_after:%Y-%m-%d}" in shown.stdout
    second = cellgate("pki", "renew", "-c", str(config), "--state-dir", str(state), cwd=tmp_path)
    assert second.returncode == 0 and pki.own().thumbprint != before.thumbprint
    assert pki.key_path.stat().st_mode & 0o777 == 0o600
    unknown = cellgate("pki", "trust", "0123abcd", "--state-dir", str(state), cwd=tmp_path)
    assert unknown.returncode == 2 and "no rejected certificate matches" in unknown.stderr
    listing = cellgate("pki", "list", "--state-dir", str(state), cwd=tmp_path)
    assert listing.stdout.splitlines() == ["trusted/ (0)", "rejected/ (0)", "issuers/ (0)"]


@pytest.mark.parametrize("damage", ["cert", "key"])
def test_check_and_run_refuse_a_corrupt_own_certificate_or_key(tmp_path: Path, damage: str) -> None:
    state = tmp_path / "state"
    config = write_map(tmp_path)
    pki = Pki(state / "pki", uri=application_uri("gw-pki"))
    pki.renew()
    (pki.cert_path if damage == "cert" else pki.key_path).write_bytes(b"\x30\x03garbage")
    for args in (["check", "--offline"], ["run"]):
        result = cellgate(*args, "-c", str(config), "--state-dir", str(state), cwd=tmp_path)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "is corrupt" in result.stderr
        assert "Traceback" not in result.stderr + result.stdout


def test_missing_password_file_is_refused_naming_the_file_not_a_secret(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    config = write_map(tmp_path, "username: operator\n    password_file: opcua-password")
    env = {"CREDENTIALS_DIRECTORY": str(credentials)}
    check = ["check", "--offline", "-c", str(config), "--state-dir", str(tmp_path / "s")]
    result = cellgate(*check, cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert f"cannot read secret file {credentials / 'opcua-password'}" in result.stderr
    (credentials / "opcua-password").write_text("hunter2-secret\n")
    ok = cellgate(*check, cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "hunter2-secret" not in ok.stdout + ok.stderr


def test_a_corrupt_user_key_is_refused_at_check_and_run(tmp_path: Path) -> None:
    key = new_key()
    cert = make_certificate(key, uri="urn:user:alice", common_name="alice", server=False)
    (tmp_path / "alice.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    (tmp_path / "alice.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
    identity = f"user_certificate: '{tmp_path / 'alice.der'}'\n    user_key: '{tmp_path / 'alice.pem'}'"
    config = write_map(tmp_path, identity)
    for args in (["check", "--offline"], ["run"]):
        result = cellgate(*args, "-c", str(config), "--state-dir", str(tmp_path / "state"), cwd=tmp_path)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert f"device coater-01: private key {tmp_path / 'alice.pem'} is corrupt" in result.stderr
        assert "Traceback" not in result.stderr + result.stdout


def test_check_says_when_it_cannot_reach_a_secure_device(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused, and the port stays ours
        port = held.getsockname()[1]
        config = tmp_path / "map.yaml"
        config.write_text(TAG_MAP.format(extra="").replace("'opc.tcp://127.0.0.1:9'", f"'opc.tcp://127.0.0.1:{port}'"))
        result = cellgate("check", "-c", str(config), "--state-dir", str(tmp_path / "state"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"coater-01: opc.tcp://127.0.0.1:{port} could not choose an endpoint: " in result.stdout
    assert "Traceback" not in result.stderr + result.stdout


def write_own_certificate(state: Path, *, not_before: datetime, days: int) -> Pki:
    pki = Pki(state / "pki", uri=application_uri("gw-pki"))
    pki.ensure()
    key = new_key()
    cert = make_certificate(key, uri=pki.uri, common_name="Cellgate", server=False, not_before=not_before, days=days)
    write_private_key(pki.key_path, key)
    pki.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return pki


@pytest.mark.parametrize(("age_days", "said"), [(0, "expires on"), (20, "expired on")], ids=["expiring", "expired"])
def test_check_and_run_warn_about_the_gateways_own_certificate(tmp_path: Path, age_days: int, said: str) -> None:
    state = tmp_path / "state"
    config = write_map(tmp_path)
    pki = write_own_certificate(state, not_before=datetime.now(UTC) - timedelta(days=age_days), days=10)
    before = pki.own().thumbprint
    check = cellgate("check", "--offline", "-c", str(config), "--state-dir", str(state), cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert f"WARNING the gateway's certificate {before} ({pki.cert_path}) {said}" in check.stderr
    assert "run `cellgate pki renew -c MAP`" in check.stderr
    if age_days == 0:
        return
    run = GatewayProcess(config=config, env={}, state_dir=state)
    run.start()
    try:
        line = run.wait_for_event("pki_certificate_expiry", 30)
    finally:
        run.close()
    assert "expired on" in str(line["error"]) and before in str(line["error"])
    assert pki.own().thumbprint == before  # never renewed silently
