"""Eclipse Tahu's sparkplug-payload (npm) as the independent Sparkplug decoder of the tests, and a host's reading of
a message stream: which Sparkplug 3.0 edge-node rules it keeps (used by tests/interop and tests/e2e)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent

TAHU_AVAILABLE = shutil.which("node") is not None and (HERE / "node_modules" / "sparkplug-payload").is_dir()
TAHU_MISSING = "needs Node.js and sparkplug-payload (`make test` runs `npm ci` in tests/interop)"


def tahu(requests: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run Tahu's decoder (or encoder) over ``requests`` in one Node process."""
    text = "".join(json.dumps(request) + "\n" for request in requests)
    result = subprocess.run(
        ["node", str(HERE / "sparkplug_decode.js")],
        input=text, capture_output=True, text=True, timeout=60, check=True,
    )
    return [json.loads(line) for line in result.stdout.splitlines()]


def decode_stream(messages: Iterable[tuple[str, bytes]]) -> list[tuple[str, dict[str, Any]]]:
    """(topic, Tahu's decoded payload) per message, in order (aliases learnt from the births, as a host does)."""
    decoded = tahu({"topic": topic, "payload": base64.b64encode(payload).decode()} for topic, payload in messages)
    return [(entry["topic"], entry["decoded"]) for entry in decoded]


def encode_command(metrics: list[dict[str, Any]]) -> bytes:
    """An NCMD/DCMD payload as a host makes it, encoded by Tahu."""
    (entry,) = tahu([{"encode": {"timestamp": 1, "metrics": metrics}}])
    return base64.b64decode(entry["payload"])


def metric_value(payload: dict[str, Any], name: str) -> Any:
    return next(metric["value"] for metric in payload.get("metrics", []) if metric.get("name") == name)


@dataclass
class HostView:
    """What a host application makes of one edge node's stream, failing on any rule the node breaks.

    Rules (Sparkplug 3.0): nothing but NDEATH before the first NBIRTH (tck-id-principles-birth-certificates-order);
    NBIRTH seq 0 with bdSeq and ``Node Control/Rebirth`` false (tck-id-payloads-nbirth-seq, -bdseq, -rebirth-req);
    every later message of the node seq + 1, 255 -> 0 (tck-id-payloads-sequence-num-incrementing); NDEATH without
    seq, only bdSeq (tck-id-payloads-ndeath-seq, tck-id-topics-ndeath-payload); DDATA only for a device born since the
    last NBIRTH and not dead since (tck-id-payloads-dbirth-order); DBIRTH metrics with name, alias and datatype,
    DDATA metrics by alias only (tck-id-payloads-alias-birth-requirement, -alias-data-cmd-requirement); timestamps
    on the payload and on every birth and data metric (tck-id-payloads-name-birth-data-requirement); an alias names one
    metric of one device between two NBIRTHs (tck-id-payloads-alias-uniqueness); the live (not is_historical) values
    of a metric in DDATA in time order (tck-id-operational-behavior-data-publish-dbirth-order, for DDATA).
    """

    node_topic: str  # spBv1.0/{group}/{TYPE}/{edge}: with TYPE as "{}"
    seq: int | None = None
    bd_seq: int | None = None
    born: set[str] = field(default_factory=set)
    nbirths: list[int] = field(default_factory=list)  # bdSeq of each NBIRTH
    ndeaths: list[int] = field(default_factory=list)  # bdSeq of each NDEATH
    dbirths: dict[str, int] = field(default_factory=dict)
    ddeaths: dict[str, int] = field(default_factory=dict)
    ddata: dict[str, int] = field(default_factory=dict)
    historical: int = 0  # DDATA with every metric is_historical
    values: dict[str, list[Any]] = field(default_factory=dict)  # device/metric name -> values seen (live and replayed)
    aliases: dict[int, str] = field(default_factory=dict)
    session_aliases: dict[int, str] = field(default_factory=dict)  # alias -> device/metric since the last NBIRTH
    live_ts: dict[str, int] = field(default_factory=dict)  # device/metric -> timestamp of its last live DDATA value

    def read(self, topic: str, payload: dict[str, Any]) -> None:
        parts = topic.split("/")
        kind, device = parts[2], (parts[4] if len(parts) > 4 else None)
        where = f"{topic} (seq {payload.get('seq')}, after {self.seq})"
        if kind == "NDEATH":
            assert "seq" not in payload, where
            assert [m["name"] for m in payload["metrics"]] == ["bdSeq"], where
            self.ndeaths.append(metric_value(payload, "bdSeq"))
            self.seq = None
            self.born.clear()
            return
        if kind == "NBIRTH":
            assert payload["seq"] == 0, where
            assert metric_value(payload, "Node Control/Rebirth") is False, where
            self.bd_seq = metric_value(payload, "bdSeq")
            self.nbirths.append(self.bd_seq)
            self.seq = 0
            self.born.clear()
            self.session_aliases.clear()
            return
        assert self.seq is not None, f"{where}: before any NBIRTH"
        assert payload["seq"] == (self.seq + 1) % 256, where
        self.seq = payload["seq"]
        assert "timestamp" in payload, where
        assert device is not None, where
        if kind == "DBIRTH":
            self.born.add(device)
            self.dbirths[device] = self.dbirths.get(device, 0) + 1
            for metric in payload["metrics"]:
                assert {"name", "alias", "type", "timestamp"} <= set(metric), where
                name = f"{device}/{metric['name']}"
                named = self.session_aliases.setdefault(metric["alias"], name)
                assert named == name, f"{where}: alias {metric['alias']} names {named} and {name}"
                self.aliases[metric["alias"]] = name
        elif kind == "DDEATH":
            assert device in self.born, f"{where}: DDEATH of a device not born"
            self.born.discard(device)
            self.ddeaths[device] = self.ddeaths.get(device, 0) + 1
        elif kind == "DDATA":
            assert device in self.born, f"{where}: DDATA of a device not born (or dead)"
            self.ddata[device] = self.ddata.get(device, 0) + 1
            flags = [bool(metric.get("isHistorical")) for metric in payload["metrics"]]
            assert all(flags) or not any(flags), f"{where}: is_historical on only some metrics"
            self.historical += all(flags)
            for metric in payload["metrics"]:
                assert "name" not in metric and "alias" in metric and "timestamp" in metric, where
                name = self.aliases[metric["alias"]]
                self.values.setdefault(name, []).append(metric["value"])
                if not metric.get("isHistorical"):
                    before, ts = self.live_ts.get(name, 0), metric["timestamp"]
                    assert ts >= before, f"{where}: {name} live at {ts} after {before}"
                    self.live_ts[name] = ts
        else:
            raise AssertionError(f"unexpected message {where}")
