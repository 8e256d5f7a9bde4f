"""What `cellgate run` loads for a Modbus-only tag map: nothing of the OPC UA stack, its certificates or Sparkplug.

cryptography alone is about 10 MB resident, a sixth of the gateway's budget at 1,000 tags (README, "Performance").
Each case runs in a fresh interpreter, so modules other tests imported do not count.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys
from pathlib import Path
import gateway.cli, gateway.runtime, gateway.http_server, gateway.metrics, gateway.status_page
from gateway.pki_cli import check_security_files
from gateway.tagmap import load_plant_from_text
plant = load_plant_from_text(sys.stdin.read(), environ={})
assert check_security_files(plant, Path(sys.argv[1]), create=True) == []
print(" ".join(sorted({name.split(".")[0] for name in sys.modules})))
"""

HEADER = """
gateway: {id: gw-lean, enterprise: e, site: s}
mqtt: {url: "mqtt://127.0.0.1:1"}
devices:
"""
MODBUS = """
  - {name: rack, area: a, line: l, protocol: modbus, host: 127.0.0.1, port: 1,
     tags: [{name: voltage, address: 0, type: float32}]}
"""
OPCUA = """
  - {name: coater, area: a, line: l, protocol: opcua, endpoint: "opc.tcp://127.0.0.1:1",
     tags: [{name: speed, node: "ns=2;s=Speed", type: float64}]}
"""


def top_level_modules(tag_map: str, state_dir: Path) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(state_dir)], input=tag_map, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_a_modbus_only_gateway_loads_no_cryptography_protobuf_or_asyncua(tmp_path: Path) -> None:
    loaded = top_level_modules(HEADER + MODBUS, tmp_path)
    assert {"gateway", "prometheus_client", "pymodbus"} <= loaded
    assert not loaded & {"cryptography", "google", "asyncua"}


def test_an_opcua_device_still_gets_its_certificate_checks(tmp_path: Path) -> None:
    assert "cryptography" in top_level_modules(HEADER + MODBUS + OPCUA, tmp_path)
