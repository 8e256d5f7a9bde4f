"""Interoperability: OpcUaSource over secure channels against an OPC UA server from another stack (node-opcua).

The server (tests/interop/opcua_server.js) runs as a Node.js process on a free port; `make test` installs
node-opcua with `npm ci` in tests/interop. Every policy x mode, user name + password, an X.509 user certificate
(trusted by node-opcua's user PKI, and one it refuses), the untrusted-server path and a wrong password are
checked against it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from structlog.testing import capture_logs

from gateway.pki import Pki, make_certificate, new_key, thumbprint, write_private_key
from gateway.sources.opcua import OpcUaDeviceOptions, OpcUaSource, OpcUaTagRef
from gateway.sources.opcua_security import ClientSecurity
from tests.support.recorder import Recorder, running
from tests.support.sim import free_tcp_port

HERE = Path(__file__).resolve().parent
USER = "line-reader"
PASSWORD = "node-Pw-7c1e"
NAMESPACE = "urn:cellgate:interop"
TAG = OpcUaTagRef(name="counter", kind="s", identifier="Counter")
START_TIMEOUT_S = 60.0

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (HERE / "node_modules" / "node-opcua").is_dir(),
    reason="needs Node.js and node-opcua (`make test` runs `npm ci` in tests/interop)",
)


class NodeOpcUaServer:
    def __init__(self, pki_dir: Path, user_pki_dir: Path) -> None:
        self.pki_dir = pki_dir
        self.user_pki_dir = user_pki_dir
        self.port = free_tcp_port()
        self.endpoint = f"opc.tcp://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        env = {**os.environ, "INTEROP_USERS": json.dumps({USER: PASSWORD})}
        # node-opcua logs to stdout too (warnings before and after the ready line): a file, never a full pipe.
        self._output = self.pki_dir.parent / f"node-server-{self.port}.log"
        with self._output.open("w") as output:
            self._process = subprocess.Popen(
                ["node", str(HERE / "opcua_server.js"), str(self.port), str(self.pki_dir), str(self.user_pki_dir)],
                cwd=HERE, env=env, stdout=output, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while "interop ready" not in self._output.read_text():
            assert self._process.poll() is None, f"node-opcua server exited: {self._output.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"node-opcua server did not start: {self._output.read_text()[-2000:]}"
            time.sleep(0.1)

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate((self.pki_dir / "own" / "certs" / "certificate.pem").read_bytes())

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


@pytest.fixture(scope="module")
def user_identities(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """X.509 user certificates and keys: ``alice`` (trusted by the server's user PKI) and ``mallory`` (not)."""
    folder = tmp_path_factory.mktemp("users")
    for name in ("alice", "mallory"):
        key = new_key()
        cert = make_certificate(key, uri=f"urn:user:{name}", common_name=name, server=False)
        (folder / f"{name}.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
        write_private_key(folder / f"{name}.pem", key)
    trusted = folder / "server-user-pki" / "trusted" / "certs"
    trusted.mkdir(parents=True)
    (trusted / "alice.der").write_bytes((folder / "alice.der").read_bytes())
    return folder


@pytest.fixture(scope="module")
def node_server(tmp_path_factory: pytest.TempPathFactory, user_identities: Path) -> Iterator[NodeOpcUaServer]:
    server = NodeOpcUaServer(tmp_path_factory.mktemp("node-pki"), user_identities / "server-user-pki")
    server.start()
    try:
        yield server
    finally:
        server.stop()




def source(
    server: NodeOpcUaServer, pki: Pki, *, policy: str, mode: str, password: str = PASSWORD,
    user_cert: Path | None = None,
) -> OpcUaSource:  # fmt: skip
    """User name + password, or with ``user_cert`` (``NAME.der``, key ``NAME.pem`` next to it) an X.509 user."""
    options = OpcUaDeviceOptions(
        endpoint=server.endpoint, namespace_uri=NAMESPACE, mode="subscribe", interval_ms=100, timeout_ms=5000,
        username=None if user_cert else USER, password=None if user_cert else password,
    )  # fmt: skip
    # node-opcua's certificate names the machine's host name and external address, not 127.0.0.1 (these tests
    # stay on loopback): the host check is off here, as `security.check_hostname: false` does in a map.
    security = ClientSecurity(
        policy=policy, mode=mode, allow_insecure=False, pki=pki, check_hostname=False, user_certificate=user_cert,
        user_key=user_cert.with_suffix(".pem") if user_cert else None,
    )  # fmt: skip
    return OpcUaSource(device="node", options=options, tags=[TAG], backoff_initial_s=0.1, backoff_max_s=0.3,
                       security=security)  # fmt: skip


def trust(pki: Pki, server: NodeOpcUaServer) -> None:
    pki.ensure()
    cert = server.certificate()
    (pki.folder("trusted") / f"{thumbprint(cert)}.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))


@pytest.mark.parametrize("policy", ["Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"])
@pytest.mark.parametrize("mode", ["Sign", "SignAndEncrypt"])
async def test_every_policy_and_mode_against_node_opcua(
    node_server: NodeOpcUaServer, tmp_path: Path, policy: str, mode: str
) -> None:
    pki = Pki(tmp_path / "pki", uri="urn:testhost:cellgate:interop")
    trust(pki, node_server)
    recorder = Recorder(15.0)
    with capture_logs() as logs:
        async with running(source(node_server, pki, policy=policy, mode=mode), recorder):
            await recorder.wait_until(lambda: len(recorder.good()) >= 2)
    values = [reading.value for reading in recorder.good()]
    assert all(isinstance(value, float) for value in values) and values == sorted(values)
    [up] = [line for line in logs if line["event"] == "opcua_link_up"]
    assert (up["security_policy"], up["security_mode"]) == (policy, mode)


async def test_node_opcua_server_is_rejected_until_trusted(node_server: NodeOpcUaServer, tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki", uri="urn:testhost:cellgate:interop")
    recorder = Recorder(15.0)
    async with running(source(node_server, pki, policy="auto", mode="SignAndEncrypt"), recorder):
        await recorder.wait_until(lambda: bool(recorder.errors()))
        thumb = thumbprint(node_server.certificate())
        assert f"cellgate pki trust {thumb}" in recorder.errors()[0]
        pki.trust(thumb)
        await recorder.wait_until(lambda: bool(recorder.good()))


async def test_wrong_password_against_node_opcua(node_server: NodeOpcUaServer, tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki", uri="urn:testhost:cellgate:interop")
    trust(pki, node_server)
    recorder = Recorder(15.0)
    with capture_logs() as logs:
        async with running(source(node_server, pki, policy="auto", mode="SignAndEncrypt", password="nope"), recorder):
            await recorder.wait_until(lambda: bool(recorder.errors()))
    refused = [line for line in logs if line["event"] == "opcua_login_refused"]
    assert refused and refused[0]["error"] in {"BadUserAccessDenied", "BadIdentityTokenRejected"}
    assert not recorder.good()


@pytest.mark.parametrize("mode", ["Sign", "SignAndEncrypt"])
async def test_x509_user_identity_against_node_opcua(
    node_server: NodeOpcUaServer, user_identities: Path, tmp_path: Path, mode: str
) -> None:
    """node-opcua checks the token's signature (server certificate + nonce) and the user certificate's trust."""
    pki = Pki(tmp_path / "pki", uri="urn:testhost:cellgate:interop")
    trust(pki, node_server)
    recorder = Recorder(15.0)
    async with running(source(node_server, pki, policy="auto", mode=mode, user_cert=user_identities / "alice.der"),
                       recorder):  # fmt: skip
        await recorder.wait_until(lambda: bool(recorder.good()))
    refused = Recorder(15.0)
    with capture_logs() as logs:
        async with running(source(node_server, pki, policy="auto", mode=mode,
                                  user_cert=user_identities / "mallory.der"), refused):  # fmt: skip
            await refused.wait_until(lambda: bool(refused.errors()))
    lines = [line for line in logs if line["event"] == "opcua_login_refused"]
    assert lines and lines[0]["error"] in {"BadUserAccessDenied", "BadIdentityTokenRejected"}, logs
    assert not refused.good()
