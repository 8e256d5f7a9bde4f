"""`cellgate pki list`, `cellgate check` and `cellgate run` on the CRLs of issuers/ (real processes).

A CRL past its nextUpdate makes the gateway refuse every server its CA signed, so `check` prints a WARNING line
and `run` logs ``pki_crl_expiry`` at start (as for the gateway's own certificate), and `pki list` shows each CRL
with its dates. Nothing listens on the OPC UA endpoint: `check` runs with --offline.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.pki import Pki, application_uri
from tests.support.gateway import GatewayProcess
from tests.support.plant_ca import make_ca, make_crl

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
TAG_MAP = """\
gateway: {id: gw-crl, enterprise: acme, site: lab}
mqtt: {url: 'mqtt://127.0.0.1:9'}
devices:
  - name: coater-01
    area: electrode
    line: cathode-1
    protocol: opcua
    endpoint: 'opc.tcp://127.0.0.1:9'
    security: {mode: Sign}
    tags:
      - {name: t, node: 'ns=2;s=X', type: float64}
"""


def cellgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60, env=dict(os.environ), check=False)  # fmt: skip


def test_list_check_and_run_tell_about_an_expired_crl(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = tmp_path / "map.yaml"
    config.write_text(TAG_MAP)
    pki = Pki(state / "pki", uri=application_uri("gw-crl"))
    pki.ensure()
    ca, key = make_ca()
    now = datetime.now(UTC)
    expired_at = now - timedelta(days=1)
    crl = make_crl(ca, key, next_update=expired_at, last_update=now - timedelta(days=8),
                   encoding=serialization.Encoding.PEM)  # fmt: skip
    crl_path = pki.folder("issuers") / "plant-ca.crl"
    (pki.folder("issuers") / "plant-ca.der").write_bytes(ca.public_bytes(serialization.Encoding.DER))
    crl_path.write_bytes(crl)

    listing = cellgate("pki", "list", "--state-dir", str(state))
    assert listing.returncode == 0, listing.stderr
    assert "issuers/ CRLs (1)" in listing.stdout
    assert f"plant-ca.crl  CN=Plant OT CA  0 revoked  issued {now - timedelta(days=8):%Y-%m-%d}  EXPIRED " \
           f"{expired_at:%Y-%m-%d %H:%M} UTC" in listing.stdout  # fmt: skip

    check = cellgate("check", "--offline", "-c", str(config), "--state-dir", str(state))
    assert check.returncode == 0, check.stderr
    assert (f"WARNING the CRL {crl_path} of the CA CN=Plant OT CA expired on {expired_at:%Y-%m-%d %H:%M} UTC"
            in check.stderr)  # fmt: skip
    assert "copy a fresh CRL from that CA into issuers/" in check.stderr

    run = GatewayProcess(config=config, env={}, state_dir=state)
    run.start()
    try:
        line = run.wait_for_event("pki_crl_expiry", 30)
    finally:
        run.close()
    assert line["level"] == "warning" and str(crl_path) in str(line["error"]) and "expired on" in str(line["error"])
