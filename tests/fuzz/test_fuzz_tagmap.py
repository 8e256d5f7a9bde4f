"""Bad tag maps never crash the loader: every input gives a Plant or a ConfigError an integrator can act on.

Inputs: random text and YAML-ish lines, random data structures dumped as YAML, alias bombs (classic "billion
laughs" and one that multiplies devices with big repeats), mutations of config/demo.yaml (at the data level and
at the byte level, through a real file), and format/node-id strings. The property is checked by
``load_outcome``: no exception other than ConfigError escapes, and every problem has a message, names the file
and points at a line that exists. `cellgate check` is run on a few inputs of the kinds that used to crash.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.errors import ConfigError
from gateway.tagmap import MAX_ADDRESS, ModbusDevice, Plant, load_plant, load_plant_from_text
from gateway.tagmap.limits import MAX_TAGS_PER_PLANT
from tests.support.fuzz import assert_clear_config_error, fuzz_settings, max_line

REPO = Path(__file__).resolve().parent.parent.parent
DEMO_TEXT = (REPO / "config" / "demo.yaml").read_text(encoding="utf-8")
DEMO_BYTES = DEMO_TEXT.encode("utf-8")
DEMO_DATA: dict[str, Any] = yaml.safe_load(DEMO_TEXT)
CELLGATE = Path(sys.executable).parent / "cellgate"
FILENAME = "fuzz.yaml"

HEADER = """\
gateway: {id: gw1, enterprise: acme, site: dunkirk}
mqtt: {url: "mqtt://127.0.0.1:1883"}
"""


def load_outcome(text: str) -> Plant | ConfigError:
    """Load ``text``; a ConfigError must be a clear one, and nothing else may escape."""
    try:
        plant = load_plant_from_text(text, filename=FILENAME, environ={})
    except ConfigError as err:
        assert_clear_config_error(err, text=text, filename=FILENAME)
        return err
    assert_sound_plant(plant)
    return plant


def assert_sound_plant(plant: Plant) -> None:
    """What the runtime relies on in any Plant the loader returns."""
    assert isinstance(plant, Plant)
    assert plant.tag_count <= MAX_TAGS_PER_PLANT
    names = [device.name for device in plant.devices]
    assert len(names) == len(set(names))
    for device in plant.devices:
        assert not device.repeat
        tag_names = [tag.name for tag in device.tags]
        assert len(tag_names) == len(set(tag_names)), device.name
        if isinstance(device, ModbusDevice):
            assert all(tag.order is not None and tag.end_address <= MAX_ADDRESS for tag in device.tags)


# ----------------------------------------------------------------------------------------------- strategies

SCHEMA_KEYS = (
    "gateway", "mqtt", "templates", "devices", "id", "enterprise", "site", "queue_size", "url", "client_id", "qos",
    "keepalive_s", "protocol", "username", "password", "ca_file", "cert_file", "key_file", "max_inflight", "name",
    "area", "line", "description", "enabled", "interval_ms", "publish", "repeat", "transport", "host", "port",
    "serial", "unit_id", "timeout_ms", "order", "max_registers_per_read", "max_bits_per_read", "max_gap", "tags",
    "table", "address", "type", "bit", "length", "scale", "offset", "unit", "min", "max", "deadband",
    "heartbeat_s", "template", "count", "start", "stride", "first", "endpoint", "namespace", "mode",
    "sampling_interval_ms", "node", "baudrate", "parity", "stopbits", "bytesize", "<<",
)  # fmt: skip
SCHEMA_WORDS = (
    "modbus", "opcua", "tcp", "rtu", "holding", "input", "coil", "discrete", "hr", "bool", "int16", "uint16",
    "int32", "uint32", "int64", "uint64", "float32", "float64", "string", "float", "ABCD", "CDAB", "BADC", "DCBA",
    "little", "tag", "batch", "subscribe", "poll", "mqtt://127.0.0.1:1883", "mqtts://[::1]:0", "mqtt://u:p@h",
    "opc.tcp://127.0.0.1:4840", "opc.tcp://", "s=Coater01.Line.Speed", "ns=2;i=7", "nsu=urn:x;s=a", "g=0",
    "b=@@", "i=4294967296", "40001", "400001", "30000", "99999", "ch{n:03d}", "{n}", "{n:>99999999}", "{m}",
    "{", "}", "a/b", "a//b", "_status", "+", "#", "$SYS", "", " ", "rack-01", "Cel", "\t", "\x85",
)  # fmt: skip
OUT_OF_RANGE = (
    -1, 0, 1, 8, 16, 126, 248, 2001, 65535, 65536, 2**31, 2**63, 2**64, -(2**63) - 1, 10**40,
    0.5, -0.0, 1e308, float("nan"), float("inf"), float("-inf"), True, False, None, "", "1e999", "0x10", "010",
)  # fmt: skip

keys = st.one_of(st.sampled_from(SCHEMA_KEYS), st.text(max_size=12))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(OUT_OF_RANGE),
    st.integers(min_value=-(10**4000), max_value=10**4000),  # up to Python's 4300-digit int/str limit
    st.floats(),
    st.text(max_size=40),
    st.sampled_from(SCHEMA_WORDS),
    st.sampled_from(("x" * 10_000, "é" * 3_000, "\U0001f50b" * 2_000)),  # very long strings
    st.dates(),
    st.datetimes(),
    st.binary(max_size=20),
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)


@st.composite
def shaped_tag_maps(draw: st.DrawFn) -> dict[str, Any]:
    """Documents shaped like a tag map (the right sections, devices with tags) with random leaves."""

    def section(required: dict[str, Any], optional_keys: tuple[str, ...]) -> dict[str, Any]:
        fields = dict(required)
        for key in draw(st.lists(st.sampled_from(optional_keys), max_size=4, unique=True)):
            fields[key] = draw(st.one_of(scalars, st.sampled_from(OUT_OF_RANGE)))
        return fields

    segment = st.one_of(st.sampled_from(("gw1", "acme", "rack-01", "hall-a")), st.text(max_size=8))
    protocol = draw(st.sampled_from(("modbus", "opcua", "profinet")))
    tag_keys = ("table", "address", "type", "bit", "length", "order", "scale", "offset", "unit", "min", "max",
                "deadband", "heartbeat_s", "node", "description")  # fmt: skip
    device_keys = ("transport", "host", "port", "unit_id", "order", "interval_ms", "endpoint", "namespace",
                   "mode", "publish", "max_gap", "repeat", "serial", "enabled")  # fmt: skip
    tags = [
        section({"name": draw(segment), "address": draw(st.integers(-2, 70_000)), "type": "uint16"}, tag_keys)
        for _ in range(draw(st.integers(0, 4)))
    ]
    device = section(
        {"name": draw(segment), "area": draw(segment), "line": draw(segment), "protocol": protocol, "tags": tags},
        device_keys,
    )
    document: dict[str, Any] = {
        "gateway": section({"id": draw(segment), "enterprise": "acme", "site": "dunkirk"}, ("queue_size", "x")),
        "mqtt": section({"url": draw(st.sampled_from(SCHEMA_WORDS[:40]))}, ("qos", "protocol", "keepalive_s")),
        "devices": [device] * draw(st.integers(1, 2)),
    }
    if draw(st.booleans()):
        document["templates"] = {"t": [section({"name": "v", "address": 0, "type": "float32"}, tag_keys)]}
    return document


def dump(data: Any, flow: bool | None = False) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=flow)


SEPARATORS = (
    ": ", ":", " ", ": &a ", ": *a", ": !!int ", ": !!float ", ": !!binary ", ": [", ": {", ": |", ": >", ": '",
    ': "', ": <<: *a", ": !custom ", ": %", ": @", ": `",
)  # fmt: skip
yamlish_lines = st.lists(
    st.tuples(
        st.sampled_from(("", "  ", "    ", "      ", " ", "\t")),
        st.sampled_from(("", "- ", "? ", "-")),
        st.one_of(st.sampled_from(SCHEMA_KEYS), st.text(max_size=6)),
        st.sampled_from(SEPARATORS),
        st.one_of(st.sampled_from(SCHEMA_WORDS), st.text(max_size=10), st.integers().map(str)),
    ).map("".join),
    max_size=15,
).map("\n".join)


# -------------------------------------------------------------------------------------------- raw text, data


@fuzz_settings(300)
@given(text=st.one_of(st.text(), yamlish_lines, yamlish_lines.map(lambda lines: HEADER + lines)))
@example(text=HEADER + "devices: []\nfoo: " + "9" * 5000)  # ValueError: > 4300 digits (was a traceback)
@example(text=HEADER + "devices: []\nfoo: !!int abc")  # ValueError from PyYAML's int converter
@example(text=HEADER + "devices: []\nfoo: !!bool maybe")  # KeyError from PyYAML's bool converter
@example(text=HEADER + "devices: []\nfoo: !!timestamp 2024-13-01")  # ValueError: month must be in 1..12
@example(text=HEADER + "devices: []\nfoo: 2024-02-30")  # ValueError: day is out of range for month
@example(text=HEADER + "devices: []\nfoo: a\ud800b")  # UnicodeEncodeError inside libyaml
@example(text="\r\r\r:")
def test_random_text_gives_plant_or_clear_error(text: str) -> None:
    load_outcome(text)


@fuzz_settings(300)
@given(data=st.one_of(values, st.dictionaries(keys, values, max_size=6), shaped_tag_maps()), flow=st.booleans())
def test_random_documents_give_plant_or_clear_error(data: Any, flow: bool) -> None:
    load_outcome(dump(data, flow))


# ----------------------------------------------------------------------------------------------- alias bombs


def laughs(depth: int, width: int) -> str:
    """Anchors lol0..lol{depth}, each a list of ``width`` aliases of the previous: width**depth leaves."""
    lines = ["anchors:", "  - &lol0 [lol]"]
    for level in range(1, depth + 1):
        lines.append(f"  - &lol{level} [{', '.join([f'*lol{level - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


BOMB_PLACES = {
    "devices": "devices: *lol{d}\n",
    "templates": "templates: {{t: *lol{d}}}\ndevices: []\n",
    "template_tag": "templates: {{t: [{{name: v, address: 0, type: uint16, description: *lol{d}}}]}}\ndevices: []\n",
    "device_tags": "devices:\n  - {{name: r, area: a, line: l, protocol: modbus, host: h, tags: *lol{d}}}\n",
    "tag_field": "devices:\n  - {{name: r, area: a, line: l, protocol: modbus, host: h, "
    "tags: [{{name: v, address: 0, type: uint16, unit: *lol{d}, foo: *lol{d}}}]}}\n",
    "repeat": "devices:\n  - {{name: r, area: a, line: l, protocol: modbus, host: h, repeat: *lol{d}}}\n",
    "client_id": "devices: []\nclient: *lol{d}\n",
}


@fuzz_settings(60)
@given(depth=st.integers(1, 9), width=st.integers(2, 10), place=st.sampled_from(sorted(BOMB_PLACES)))
@example(depth=9, width=10, place="devices")  # a billion leaves
def test_billion_laughs_is_rejected_with_few_problems(depth: int, width: int, place: str) -> None:
    text = laughs(depth, width) + HEADER + BOMB_PLACES[place].format(d=depth)
    outcome = load_outcome(text)
    assert isinstance(outcome, ConfigError)  # `anchors` is an unknown top-level key, at least
    # Aliases are built once and shared; problems are reported per list item written, never per leaf.
    assert len(outcome.problems) <= 2 * width + 5


@fuzz_settings(40)
@given(
    copies=st.integers(4, 400),
    template_tags=st.integers(1, 20),
    merge=st.booleans(),
    protocol=st.sampled_from(("modbus", "opcua")),
)
@example(copies=1000, template_tags=20, merge=False, protocol="opcua")  # 1.3 billion tags from ~5 kB of YAML
def test_alias_multiplied_repeats_are_rejected_before_expansion(
    copies: int, template_tags: int, merge: bool, protocol: str
) -> None:
    # Each repeat makes 65536 x template_tags tags; aliased devices multiply that for a few bytes each. This used
    # to build every instance (about a second and 75 MB per `- *d` line) before reporting the duplicate names.
    if protocol == "modbus":
        template = [{"name": f"v{i}", "address": i, "type": "uint16"} for i in range(template_tags)]
        link = "transport: tcp, host: 127.0.0.1"
        stride = ", stride: 32"
    else:
        template = [{"name": f"v{i}", "node": f"s=Rack.Ch{{n}}.V{i}"} for i in range(template_tags)]
        link = "endpoint: 'opc.tcp://127.0.0.1:4840', namespace: 'urn:x'"
        stride = ""
    repeat = f"{{template: t, count: 65536, name: 'ch{{n}}'{stride}}}"
    device = f"{{name: d, area: a, line: l, protocol: {protocol}, {link}, repeat: {repeat}}}"
    more = [f"  - {{<<: *d, name: d{i}}}" if merge else "  - *d" for i in range(copies)]
    text = HEADER + f"templates:\n  t: {dump(template, True)}devices:\n  - &d {device}\n" + "\n".join(more) + "\n"
    outcome = load_outcome(text)
    assert isinstance(outcome, ConfigError)
    expected = (copies + 1) * 65536 * template_tags + template_tags
    assert any(f"expands to {expected:,} tags" in problem.message for problem in outcome.problems), outcome


# ------------------------------------------------------------------------------------- format strings, node ids


@fuzz_settings(200)
@given(
    pattern=st.one_of(
        st.text(max_size=20),
        st.from_regex(r"[a-z]{0,3}\{n(![rsa])?(:[<>^=+ #0-9.,_dxXfeEgn%{}]{0,12})?\}[a-z/]{0,3}", fullmatch=True),
    ),
    first=st.one_of(st.integers(0, 10), st.integers(0, 10**30)),
    protocol=st.sampled_from(("modbus", "opcua")),
)
@example(pattern="ch{n:>300000000}", first=1, protocol="modbus")  # built a 300 MB name: 15 s, 2.9 GB
@example(pattern="c{n:{n}}", first=10**11, protocol="modbus")  # width n = 10**11: MemoryError escaped
@example(pattern="s=x{n:.999999999f}", first=1, protocol="opcua")  # a node id of a billion digits
@example(pattern="s=x{n:>300000000}", first=1, protocol="opcua")
def test_name_and_node_patterns_give_plant_or_clear_error(pattern: str, first: int, protocol: str) -> None:
    repeat: dict[str, Any] = {"template": "t", "first": first, "count": 2}
    device: dict[str, Any] = {"name": "d", "area": "a", "line": "l", "protocol": protocol, "repeat": repeat}
    if protocol == "modbus":
        template: dict[str, Any] = {"name": "v", "address": 0, "type": "uint16"}
        device["host"] = "127.0.0.1"
        repeat |= {"stride": 1, "name": pattern}
    else:
        template = {"name": "v", "node": pattern}
        device |= {"endpoint": "opc.tcp://127.0.0.1:4840", "namespace": "urn:x"}
        repeat["name"] = "ch{n}"
    load_outcome(HEADER + dump({"templates": {"t": [template]}, "devices": [device]}))


node_forms = st.from_regex(r"(ns=[0-9]{0,8};|nsu=[a-z:;]{0,6};)?[isgbx]=[0-9A-Za-z+/=;{}-]{0,40}", fullmatch=True)


@fuzz_settings(200)
@given(node=st.one_of(st.text(max_size=30), node_forms))
@example(node="i=" + "9" * 5000)  # int() refused 4300+ digits; the message told integrators about sys.set_int...
@example(node="ns=" + "9" * 5000 + ";i=1")
def test_node_ids_give_plant_or_clear_error(node: str) -> None:
    outcome = load_outcome(
        HEADER
        + dump(
            {
                "devices": [
                    {
                        "name": "d",
                        "area": "a",
                        "line": "l",
                        "protocol": "opcua",
                        "endpoint": "opc.tcp://h:4840",
                        "namespace": "urn:x",
                        "tags": [{"name": "v", "node": node}],
                    }
                ]
            }
        )
    )
    if isinstance(outcome, ConfigError):
        assert all("set_int_max_str_digits" not in problem.message for problem in outcome.problems)


# ------------------------------------------------------------------------------------------- demo mutations


def test_demo_loads() -> None:
    """The starting point of the mutations is itself valid."""
    plant = load_outcome(DEMO_TEXT)
    assert isinstance(plant, Plant) and plant.tag_count > 100


DataPath = tuple[str | int, ...]


def paths(node: Any, prefix: DataPath = ()) -> Iterator[DataPath]:
    """Every path into a YAML data tree (mapping keys and list indexes), the root included."""
    yield prefix
    if isinstance(node, dict):
        for key, child in node.items():
            yield from paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from paths(child, (*prefix, index))


def get(node: Any, path: DataPath) -> Any:
    for part in path:
        node = node[part]
    return node


def typo(key: str, draw: st.DrawFn) -> str:
    if not key:
        return "x"
    index = draw(st.integers(0, len(key) - 1))
    return draw(st.sampled_from((key[:index] + key[index + 1 :], key[:index] + "_" + key[index:], key.upper())))


def not_of_type(kind: type) -> Callable[[object], bool]:
    return lambda new: type(new) is not kind


@st.composite
def mutated_demo(draw: st.DrawFn) -> dict[str, Any]:
    data = copy.deepcopy(DEMO_DATA)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(list(paths(data))))
        node = get(data, path)
        parent = get(data, path[:-1]) if path else None
        operation = draw(
            st.sampled_from(("delete", "retype", "out_of_range", "unknown_key", "rename_key", "duplicate_device"))
        )
        if operation == "delete" and parent is not None:
            del parent[path[-1]]
        elif operation == "retype" and parent is not None:
            parent[path[-1]] = draw(values.filter(not_of_type(type(node))))
        elif operation == "out_of_range" and parent is not None:
            parent[path[-1]] = draw(st.sampled_from(OUT_OF_RANGE))
        elif operation == "unknown_key" and isinstance(node, dict):
            node[draw(st.one_of(st.sampled_from(SCHEMA_KEYS), st.text(max_size=8)))] = draw(scalars)
        elif operation == "rename_key" and isinstance(parent, dict) and isinstance(path[-1], str):
            parent[typo(path[-1], draw)] = parent.pop(path[-1])
        elif operation == "duplicate_device" and isinstance(data.get("devices"), list) and data["devices"]:
            devices = data["devices"]
            twin = copy.deepcopy(draw(st.sampled_from(devices)))
            if isinstance(twin, dict) and draw(st.booleans()):
                twin["name"] = draw(st.sampled_from(("rack-02", "coater-01", "", "a b", "_x")))
            devices.insert(draw(st.integers(0, len(devices))), twin)
    return data


@fuzz_settings(60)  # each example loads the whole 999-tag demo map (~0.15 s); FUZZ_SCALE=10 for a long run
@given(data=mutated_demo(), flow=st.booleans())
def test_mutated_demo_gives_plant_or_clear_error(data: dict[str, Any], flow: bool) -> None:
    load_outcome(dump(data, flow))


INSERTS = (b"\t", b"\xff", b"\xc3", b": ", b"\n- ", b"&a ", b"*a", b"\x00", b"\r")


@st.composite
def damaged_bytes(draw: st.DrawFn) -> bytes:
    data = bytearray(DEMO_BYTES)
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        operation = draw(st.sampled_from(("flip", "delete", "insert", "truncate")))
        if operation == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif operation == "delete":
            del data[at : at + draw(st.integers(1, 40))]
        elif operation == "insert":
            data[at:at] = draw(st.one_of(st.binary(min_size=1, max_size=8), st.sampled_from(INSERTS)))
        else:
            del data[at:]
    return bytes(data)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-tagmap")


@fuzz_settings(150)
@given(data=damaged_bytes())
@example(data=DEMO_BYTES[:500] + b"\xff" + DEMO_BYTES[500:])
@example(data=DEMO_BYTES.replace(b"Cel", b"\xb0C"))  # Latin-1 degree sign
def test_damaged_demo_file_gives_plant_or_clear_error(data: bytes, fuzz_dir: Path) -> None:
    path = fuzz_dir / "tagmap.yaml"
    path.write_bytes(data)
    try:
        plant = load_plant(path, environ={})
    except ConfigError as err:
        assert_clear_config_error(err, text=data.decode("utf-8", "replace"), filename=str(path))
    else:
        assert_sound_plant(plant)


# --------------------------------------------------------------------------------------------------- the CLI

CLI_CASES = {
    "huge_integer": HEADER + "devices: []\nqueue: " + "9" * 5000 + "\n",
    "explicit_tag": HEADER + "devices: []\nfoo: !!bool maybe\n",
    "format_bomb": HEADER
    + "templates: {t: [{name: v, address: 0, type: uint16}]}\ndevices:\n"
    + "  - {name: d, area: a, line: l, protocol: modbus, host: h, repeat: {template: t, count: 2, stride: 1, "
    + "name: 'c{n:{n}}', first: 100000000000}}\n",
    "alias_bomb": HEADER
    + "templates: {t: [{name: v, address: 0, type: uint16}]}\ndevices:\n"
    + "  - &d {name: d, area: a, line: l, protocol: modbus, host: h, repeat: {template: t, count: 65536, stride: 1, "
    + "name: 'c{n}'}}\n"
    + "  - *d\n" * 10,
    "latin1_byte": (HEADER + "devices: []\n# 25 \xb0C\n").encode("latin-1").decode("utf-8", "surrogateescape"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_check_reports_file_line_and_exits_2(case: str, fuzz_dir: Path) -> None:
    path = fuzz_dir / f"{case}.yaml"
    path.write_bytes(CLI_CASES[case].encode("utf-8", "surrogateescape"))
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    done = subprocess.run(
        [str(CELLGATE), "check", "-c", str(path)], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    located = [line for line in done.stderr.splitlines() if re.match(rf"{re.escape(str(path))}:[1-9]\d*:\d+: ", line)]
    assert located, done.stderr
    last = max_line(CLI_CASES[case])
    assert all(int(line[len(str(path)) + 1 :].split(":")[0]) <= last for line in located)
