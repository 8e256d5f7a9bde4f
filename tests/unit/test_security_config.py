"""Tag-map rules for OPC UA security, user identities and secret files; the PKI helpers that need no server."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.pki import Pki, PkiError, make_certificate, names_host, new_key
from gateway.secrets import SecretFileError, read_secret_file
from gateway.tagmap import OpcUaDevice
from gateway.tagmap.loader import load_plant_from_text

MAP = """\
gateway: {{id: gw, enterprise: acme, site: lab}}
mqtt: {{url: 'mqtt://127.0.0.1:1883'{mqtt}}}
devices:
  - name: plc
    area: a
    line: l
    protocol: {protocol}
    {device}
    tags:
      - {tag}
"""
OPCUA = "endpoint: 'opc.tcp://127.0.0.1:4840'"
OPCUA_TAG = "{name: t, node: 'ns=2;s=X', type: float64}"


def plant(device: str = "", *, mqtt: str = "", protocol: str = "opcua") -> object:
    tag = OPCUA_TAG if protocol == "opcua" else "{name: t, address: 0, type: uint16}"
    head = OPCUA if protocol == "opcua" else "host: 127.0.0.1"
    body = MAP.format(mqtt=mqtt, protocol=protocol, device=f"{head}\n    {device}".rstrip(), tag=tag)
    return load_plant_from_text(body, environ={})


def problems(device: str = "", **kwargs: str) -> str:
    with pytest.raises(ConfigError) as caught:
        plant(device, **kwargs)
    return "\n".join(str(problem) for problem in caught.value.problems)


def test_security_defaults_to_auto_signandencrypt_without_insecure_fallback() -> None:
    loaded = plant("security: {}")
    device = loaded.devices[0]  # type: ignore[attr-defined]
    assert isinstance(device, OpcUaDevice) and device.security is not None
    assert (device.security.policy, device.security.mode) == ("auto", "SignAndEncrypt")
    assert device.security.allow_insecure is False and device.security.check_hostname is True


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("security: {policy: Basic128Rsa15}", "security.policy"),
        ("security: {mode: None}", "security.mode"),
        ("username: u\n    password: p\n    password_file: f", "set either password or password_file"),
        ("password_file: f", "a password_file is set but no username"),
        ("user_certificate: c.der\n    security: {}", "needs both user_certificate and user_key"),
        ("user_certificate: c.der\n    user_key: k.pem", "needs a secure channel"),
        ("user_certificate: c.der\n    user_key: k.pem\n    username: u\n    security: {}", "choose one user identity"),
    ],
)
def test_bad_security_settings_are_load_errors(device: str, expected: str) -> None:
    assert expected in problems(device)


def test_mqtt_password_file_needs_a_username_and_excludes_password() -> None:
    assert "a password_file is set but no username" in problems(mqtt=", password_file: mqtt-pw")
    assert "set either password or password_file" in problems(
        mqtt=", username: gw, password: x, password_file: mqtt-pw"
    )


def test_security_on_a_modbus_device_is_named_as_an_opcua_setting() -> None:
    assert "an OPC UA device setting" in problems("security: {}", protocol="modbus")


def test_secret_files_come_from_the_credentials_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_text("first-line\nsecond\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert read_secret_file("pw") == "first-line"
    assert read_secret_file(tmp_path / "pw") == "first-line"
    with pytest.raises(SecretFileError, match=r"cannot read secret file .*missing"):
        read_secret_file("missing")


def test_host_names_and_loopback() -> None:
    cert = make_certificate(new_key(), uri="urn:x", common_name="x", server=True, hosts=("localhost", "PLC-1"))
    assert names_host(cert, "plc-1") and names_host(cert, "127.0.0.1") and names_host(cert, "::1")
    assert not names_host(cert, "10.0.0.5") and not names_host(cert, "plc-2")


def test_own_certificate_of_another_gateway_is_refused(tmp_path: Path) -> None:
    Pki(tmp_path, uri="urn:h:cellgate:one").ensure()
    with pytest.raises(PkiError, match="is for another application URI"):
        Pki(tmp_path, uri="urn:h:cellgate:two").ensure()


def test_a_pki_folder_that_cannot_be_made_is_a_pki_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(PkiError, match="cannot create the PKI folder"):
        Pki(tmp_path / "file" / "pki", uri="urn:h:cellgate:one").ensure()


def test_every_opcua_session_of_a_device_opens_with_a_60_s_session_timeout() -> None:
    from gateway.sources.opcua_security import SESSION_TIMEOUT_MS, new_client

    # the source, the event link and browse all open their clients here (their logins are tested on real servers)
    client = new_client("opc.tcp://127.0.0.1:4840", timeout_s=2.0, username=None, password=None, password_file=None)
    # an orphaned session holds a PLC's session slot for this long, not asyncua's default hour
    assert client.session_timeout == SESSION_TIMEOUT_MS == 60_000
