"""One vocabulary: the tag map's enums reach the read plan as they are, with no parallel string sets."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from gateway.assembly import active_devices, modbus_plan, opcua_security
from gateway.cli import build_parser
from gateway.errors import ConfigError
from gateway.sources.modbus_plan import BYTE_ORDERS, TABLES, VALUE_TYPES
from gateway.sources.opcua_security import POLICIES
from gateway.tagmap import ByteOrder, DataType, ModbusDevice, OpcUaDevice, Table, load_plant_from_text, model
from gateway.tagmap.model import OpcUaSecurity
from gateway.vocabulary import OpcUaSecurityMode, OpcUaSecurityPolicy
from tests.support.tagmap import SECURE_OPCUA_MAP

PLANT = """
gateway: {id: gw, enterprise: acme, site: s1}
mqtt: {url: "mqtt://127.0.0.1:1883"}
devices:
  - name: rack
    area: a
    line: l
    protocol: modbus
    host: 127.0.0.1
    port: 1502
    order: CDAB
    tags:
      - {name: v, address: 40001, type: float32}
      - {name: run, address: 1, table: coil, type: bool}
"""


def test_the_planner_knows_exactly_the_tag_maps_members() -> None:
    assert tuple(Table) == TABLES
    assert tuple(DataType) == VALUE_TYPES
    assert tuple(ByteOrder) == BYTE_ORDERS


def test_the_read_plan_carries_the_tag_maps_enum_members() -> None:
    device = active_devices(load_plant_from_text(PLANT))[0]
    assert isinstance(device, ModbusDevice)
    requests = modbus_plan(device).requests
    tables = {request.table for request in requests}
    assert tables == {Table.HOLDING, Table.COIL}
    assert all(type(request.table) is Table for request in requests)


# ----------------------------------------------------------------------------------- OPC UA security


def _words_in_literals(annotation: object) -> bool:
    """True if ``annotation`` is, or contains, a Literal of words (a parallel vocabulary)."""
    if typing.get_origin(annotation) is typing.Literal:
        return any(isinstance(arg, str) and arg.isalpha() and len(arg) > 1 for arg in typing.get_args(annotation))
    return any(_words_in_literals(arg) for arg in typing.get_args(annotation))


def _models() -> list[type[BaseModel]]:
    classes = [value for value in vars(model).values() if isinstance(value, type) and issubclass(value, BaseModel)]
    return [cls for cls in classes if cls.__module__ == model.__name__]


def test_no_field_of_the_tag_map_is_a_literal_of_words() -> None:
    """Closed sets of words are enums of gateway.vocabulary; only a device's ``protocol`` (the key pydantic tells
    the device kinds apart by) stays a one-word Literal."""
    found = {f"{cls.__name__}.{name}" for cls in _models() for name, field in cls.model_fields.items()
             if name != "protocol" and _words_in_literals(field.annotation)}  # fmt: skip
    assert found == set()
    assert OpcUaSecurity.model_fields["policy"].annotation is OpcUaSecurityPolicy
    assert OpcUaSecurity.model_fields["mode"].annotation is OpcUaSecurityMode


def test_security_settings_are_the_vocabulary_members_down_to_the_client(tmp_path: Path) -> None:
    plant = load_plant_from_text(SECURE_OPCUA_MAP.format(security="{policy: Aes128_Sha256_RsaOaep, mode: Sign}"))
    device = plant.devices[0]
    assert isinstance(device, OpcUaDevice) and device.security is not None
    assert device.security.policy is OpcUaSecurityPolicy.AES128_SHA256_RSAOAEP
    assert device.security.mode is OpcUaSecurityMode.SIGN
    client = opcua_security(device, gateway_id="gw", pki_root=tmp_path)
    assert client is not None
    assert (client.policy, client.mode) == (OpcUaSecurityPolicy.AES128_SHA256_RSAOAEP, OpcUaSecurityMode.SIGN)
    assert type(client.policy) is OpcUaSecurityPolicy and type(client.mode) is OpcUaSecurityMode
    defaults = load_plant_from_text(SECURE_OPCUA_MAP.format(security="{}")).devices[0]
    assert isinstance(defaults, OpcUaDevice) and defaults.security is not None
    assert (defaults.security.policy, defaults.security.mode) == ("auto", "SignAndEncrypt")  # the same spellings


def test_the_security_code_knows_exactly_the_policies_of_the_vocabulary(capsys: pytest.CaptureFixture[str]) -> None:
    assert set(POLICIES) == set(OpcUaSecurityPolicy) - {OpcUaSecurityPolicy.AUTO}
    assert all(POLICIES[policy].URI.endswith(f"#{policy}") for policy in POLICIES)  # the OPC UA names
    parser = build_parser()
    args = parser.parse_args(["browse", "opc.tcp://127.0.0.1:4840", "--security", "Basic256Sha256", "--mode", "Sign"])
    assert (args.security, args.mode) == ("Basic256Sha256", "Sign")
    with pytest.raises(SystemExit):
        parser.parse_args(["browse", "opc.tcp://127.0.0.1:4840", "--security", "Basic128Rsa15"])
    assert ("argument --security: invalid choice: 'Basic128Rsa15' (choose from 'auto', 'Basic256Sha256', "
            "'Aes128_Sha256_RsaOaep', 'Aes256_Sha256_RsaPss')") in capsys.readouterr().err  # fmt: skip


@pytest.mark.parametrize(
    ("security", "expected"),
    [
        ("{policy: Basic128Rsa15}", "map.yaml:9:24: devices[0].security.policy: Input should be 'auto', "
         "'Basic256Sha256', 'Aes128_Sha256_RsaOaep' or 'Aes256_Sha256_RsaPss' (got 'Basic128Rsa15')"),
        ("{policy: basic256sha256}", "map.yaml:9:24: devices[0].security.policy: Input should be 'auto', "
         "'Basic256Sha256', 'Aes128_Sha256_RsaOaep' or 'Aes256_Sha256_RsaPss' (got 'basic256sha256')"),
        ("{mode: None}", "map.yaml:9:22: devices[0].security.mode: Input should be 'Sign' or 'SignAndEncrypt' "
         "(got 'None')"),
        ("{mode: 3}", "map.yaml:9:22: devices[0].security.mode: Input should be 'Sign' or 'SignAndEncrypt' (got 3)"),
    ],
)  # fmt: skip
def test_a_bad_security_value_is_reported_at_its_place_as_before(security: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_plant_from_text(SECURE_OPCUA_MAP.format(security=security), filename="map.yaml")
    assert str(caught.value) == expected
