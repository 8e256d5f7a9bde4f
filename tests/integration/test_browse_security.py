"""``cellgate browse --security``: the browse connects as a device with a ``security:`` block does.

Against the coater simulator serving only secure endpoints (user-name login required): an unknown server is
refused (exit 2, its certificate copied to ``rejected/`` with the ``cellgate pki trust`` hint, no map written);
once trusted, the browse runs over SignAndEncrypt with the gateway's own certificate (made in the PKI folder on
first use) and a password from a file, and writes the map. Without ``--security`` it is refused: the server
offers no SecurityPolicy None endpoint.
"""

from __future__ import annotations

import asyncio
import io
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
import yaml
from cryptography import x509

from gateway.browse import run_browse
from gateway.pki import thumbprint
from simulators.machines.coater import Coater
from simulators.servers.opcua_server import OpcUaSimulatorServer, ServerSecurity

USER, PASSWORD = "integrator", "s3cret-browse"


@pytest_asyncio.fixture
async def secure_server(tmp_path: Path) -> AsyncIterator[tuple[OpcUaSimulatorServer, Path]]:
    server_pki = tmp_path / "sim-pki"
    security = ServerSecurity(pki_dir=server_pki, users={USER: PASSWORD})
    async with OpcUaSimulatorServer(machines={"Coater01": Coater(rng=random.Random(1))}, port=0, autostep=False,
                                    security=security) as server:
        yield server, server_pki


async def browse(endpoint: str, output: Path, **options: object) -> tuple[int, str]:
    stderr = io.StringIO()
    code = await asyncio.to_thread(
        run_browse, endpoint=endpoint, root=None, depth=10, include=["Coater01/Line/*"], exclude=[],
        output=str(output), area="a", line="l", templates=True, timeout_s=5.0, stderr=stderr,
        is_terminal=lambda: False, **options)  # type: ignore[arg-type]
    return code, stderr.getvalue()


async def test_browse_over_a_secure_channel_after_trusting_the_server(
    secure_server: tuple[OpcUaSimulatorServer, Path], tmp_path: Path
) -> None:
    server, server_pki = secure_server
    pki_root = tmp_path / "state" / "pki"
    password = tmp_path / "password"
    password.write_text(PASSWORD + "\n", encoding="utf-8")
    output = tmp_path / "map.yaml"
    secure = {"security": "auto", "pki_root": pki_root, "username": USER, "password_file": str(password)}

    code, message = await browse(server.endpoint, output, **secure)
    thumb = thumbprint(x509.load_der_x509_certificate((server_pki / "own" / "cert.der").read_bytes()))
    assert code == 2 and "is not trusted" in message and f"cellgate pki trust {thumb}" in message
    assert (pki_root / "rejected" / f"{thumb}.der").exists() and not output.exists()
    assert (pki_root / "own" / "cert.der").exists()  # the browse's own certificate, made on first use

    (pki_root / "rejected" / f"{thumb}.der").rename(pki_root / "trusted" / f"{thumb}.der")  # `cellgate pki trust`
    code, message = await browse(server.endpoint, output, **secure)
    assert code == 0, message
    tags = yaml.safe_load(output.read_text(encoding="utf-8"))["devices"][0]["tags"]
    assert {tag["node"] for tag in tags} >= {"nsu=urn:cellgate:simulators;s=Coater01.Line.Speed"}

    code, message = await browse(server.endpoint, output, security="Basic256Sha256", security_mode="Sign",
                                 pki_root=pki_root, username=USER, password_file=str(password))
    assert code == 0, message

    code, message = await browse(server.endpoint, tmp_path / "plain.yaml")
    assert code != 0 and not (tmp_path / "plain.yaml").exists()
