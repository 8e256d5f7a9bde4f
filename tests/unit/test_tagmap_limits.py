"""The tag limit of one map: refused before expansion, and stated in the README as the code has it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.tagmap import load_plant_from_text
from gateway.tagmap.limits import MAX_REPEAT_COUNT, MAX_TAGS_PER_PLANT, MEASURED_PEAK_MB_AT_LIMIT

README = Path(__file__).resolve().parents[2] / "README.md"

HEAD = """\
gateway: {id: gw, enterprise: e, site: s}
mqtt: {url: "mqtt://127.0.0.1:1883"}
templates:
  register:
    - {name: value, address: 0, type: uint16}
devices:
"""
DEVICE = """\
  - name: plc-{index:02d}
    area: a
    line: l
    protocol: modbus
    host: 127.0.0.1
    port: {port}
    repeat: {{template: register, count: {count}, start: 0, stride: 1, name: 'r{{n:05d}}'}}
"""


def devices_of(total: int) -> str:
    """Devices of at most 60,000 repeated registers each, ``total`` tags in all (plus the template's own)."""
    text = HEAD
    index = 0
    while total > 0:
        count = min(total, 60_000, MAX_REPEAT_COUNT)
        text += DEVICE.format(index=index + 1, port=5020 + index, count=count)
        total -= count
        index += 1
    return text


def test_a_map_past_the_tag_limit_is_refused_before_expansion() -> None:
    """Issue 10 defect 10 recipe: a map of 249,750 tags was accepted by the old 250,000 limit and then needed more
    memory than the unit's MemoryMax. Past MAX_TAGS_PER_PLANT the loader refuses it, naming the limit."""
    with pytest.raises(ConfigError) as refused:
        load_plant_from_text(devices_of(MAX_TAGS_PER_PLANT + 1), environ={})
    [problem] = refused.value.problems
    assert f"more than the {MAX_TAGS_PER_PLANT:,} one gateway takes" in str(problem)


def test_readme_states_the_limit_and_its_measured_peak() -> None:
    readme = README.read_text(encoding="utf-8")
    assert f"At most {MAX_TAGS_PER_PLANT:,} tags" in readme
    assert f"{MEASURED_PEAK_MB_AT_LIMIT} MiB" in readme
