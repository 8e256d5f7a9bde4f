"""seq never restarts below what subscribers saw, whatever happens to the state directory (issue 10, defect 4).

The gateway runs in-process against a real Mosquitto and a Modbus TCP server; between runs the test deletes
``spool.db`` (before the fix the seq numbers lived there, so they restarted at 1), then the seq state files
themselves (then numbering resumes at the wall-clock floor, said loudly), then overwrites one of them with
random bytes (moved aside, named in the log; the other one and the reservations still bound what was used).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import orjson
import structlog

from gateway.runtime import Gateway
from gateway.seq_reservation import (
    SEQ_RESERVE_FILE,
    SLOT_FILES,
    SNAPSHOT_FILES,
    PreviousStop,
    SeqFileStore,
    SeqReservations,
)
from gateway.tagmap import load_plant_from_text
from tests.support.modbus import encode_registers, free_tcp_port, sim_device, tcp_server
from tests.support.mosquitto import Mosquitto, Subscriber
from tests.support.tmpfs import fill_disk, mounted_tmpfs

FC_HOLDING = 3

TAGMAP = """
gateway: {{id: gw-seq, enterprise: {enterprise}, site: s1}}
mqtt: {{url: "mqtt://127.0.0.1:{broker_port}"}}
devices:
  - name: rack
    area: formation
    line: l1
    protocol: modbus
    host: 127.0.0.1
    port: {modbus_port}
    unit_id: 1
    interval_ms: 100
    publish: batch
    tags:
      - {{name: voltage, address: 0, type: float32, unit: V}}
"""


async def test_seq_survives_a_deleted_spool_and_a_lost_or_corrupt_seq_state(tmp_path: Path) -> None:
    """Issue 10 defect 4 recipe (seq part): spool.db deleted, then the seq state deleted, then one seq state file
    smashed, between clean runs: seq never restarts below what the subscriber saw."""
    enterprise = f"sq{uuid.uuid4().hex[:8]}"
    modbus_port = free_tcp_port()
    state_dir = tmp_path / "state"
    with Mosquitto() as broker:
        plant_text = TAGMAP.format(enterprise=enterprise, broker_port=broker.port, modbus_port=modbus_port)
        topic = f"{enterprise}/s1/formation/l1/rack/_batch"
        subscriber = Subscriber(broker.host, broker.port, topic)
        subscriber.start()
        runs: list[list[int]] = []
        starts: list[dict[str, object]] = []
        try:
            async with tcp_server([sim_device(1)], modbus_port) as server:
                for run in range(4):
                    if run == 1:
                        for name in ("spool.db", "spool.db-wal", "spool.db-shm"):
                            (state_dir / name).unlink(missing_ok=True)
                    if run == 2:
                        for name in (*SLOT_FILES, *SNAPSHOT_FILES):
                            (state_dir / name).unlink()
                    if run == 3:
                        # The newest snapshot (the clean stop's): the other one is older, the reservations bound
                        # what was sent since it.
                        newest = max(
                            (state_dir / name for name in SNAPSHOT_FILES), key=lambda path: path.stat().st_mtime
                        )
                        newest.write_bytes(os.urandom(4096))
                    subscriber.clear()
                    plant = load_plant_from_text(plant_text, filename="seq.yaml", environ={})
                    stop = asyncio.Event()
                    with structlog.testing.capture_logs() as logs:
                        running = asyncio.create_task(Gateway(plant, state_dir=state_dir).run(stop))
                        try:
                            for value in range(5):  # changing values: a batch every cycle
                                await server.async_setValues(1, FC_HOLDING, 0, encode_registers(3.0 + value, "float32"))
                                await asyncio.sleep(0.15)
                            await subscriber.wait_for(lambda ms: len(ms) >= 3, 15)
                        finally:
                            stop.set()
                            await asyncio.wait_for(running, 15)
                    starts.append(next(entry for entry in logs if entry["event"] == "gateway_starting"))
                    if run == 2:
                        assert any(entry["event"] == "seq_state_lost" for entry in logs)
                    if run == 3:
                        (corrupt,) = [entry for entry in logs if entry["event"] == "seq_state_corrupt"]
                        assert await asyncio.to_thread(Path(str(corrupt["moved_to"])).exists)
                    await asyncio.sleep(0.3)
                    runs.append([orjson.loads(m.payload)["seq"] for m in subscriber.on(topic)])
        finally:
            subscriber.stop()

    assert [start["previous_stop"] for start in starts] == ["new", "clean", "lost", "unclean_one_slot_bad"]
    first, second, third, fourth = runs
    assert first[0] == 1
    assert second[0] == first[-1] + 1, "after a clean stop seq continues exactly, spool.db or not"
    assert third[0] > second[-1], "a lost seq state never restarts below what was seen"
    assert third[0] >= int((time.time() - 60) * 1_000_000)  # the wall-clock floor
    assert fourth[0] > third[-1], "one smashed state file never makes seq restart below what was seen"


async def test_the_seq_state_is_written_on_a_completely_full_state_disk(tmp_path: Path) -> None:
    """Issue 10 defect 1 ("keeps a reserve so deletes and seq checkpoints still work"), on a real 1 MB tmpfs
    filled to the last byte: the reservations, the snapshots and the clean stop's exact numbers are still
    written (the reserve file gives the first write room, each replaced slot the next), so a crash on a full
    disk cannot repeat a number and the next start continues exactly. Before, every write failed (ENOSPC:
    seq_snapshot_failed, seq_reservation_failed) and numbering went on in memory only."""
    state = tmp_path / "state"
    live: dict[str, int] = {}
    with mounted_tmpfs(state, size="1m"):
        first = SeqReservations(SeqFileStore(state), snapshot=lambda: {"dev": dict(live)}, period_s=5.0)
        assert (await first.start(used_before=False)).previous_stop is PreviousStop.NEW
        first.claim(["a/t"])
        await first.budget("dev").take(1)
        live["a/t"] = 1
        assert (state / SEQ_RESERVE_FILE).stat().st_size > 0
        await asyncio.to_thread(fill_disk, state)
        with structlog.testing.capture_logs() as logs:
            for round_ in range(10):
                await first.budget("dev").take(first.reserve)  # past the block: a reservation must be written
                live["a/t"] += first.reserve
                if round_ % 3 == 0:
                    first.invalidate()  # as after a reload: a snapshot, then a reservation
                await first.checkpoint()
            await first.stop()
        failed = [entry for entry in logs if entry["event"] in ("seq_reservation_failed", "seq_snapshot_failed")]
        assert failed == [], failed
        assert first.write_failures == 0

        second = SeqReservations(SeqFileStore(state), snapshot=lambda: {"dev": {}}, period_s=5.0)
        assert (await second.start(used_before=True)).previous_stop is PreviousStop.CLEAN
        assert second.claim(["a/t"])["a/t"] == live["a/t"]


def test_the_seq_reserve_keeps_the_room_a_full_disk_has_left_from_other_writers(tmp_path: Path) -> None:
    """A full state disk shared with another writer (the spool) that takes every byte as soon as it is free: once a
    write has used the reserve and there is no room to make all of it again, the room there is stays the reserve,
    so the next write still has it. Before, the reserve file was given up, the spool took the room and the next
    seq write failed (ENOSPC: seq_reservation_failed in the full-disk e2e test)."""
    state = tmp_path / "state"
    with mounted_tmpfs(state, size="1m"):
        store = SeqFileStore(state, reserve_min_bytes=8192)
        store.write("a", b"x" * 1000)
        assert (state / SEQ_RESERVE_FILE).stat().st_size == 8192
        fill_disk(state)
        store.write("b", b"y" * 3000)  # a new slot: the reserve's room, less a page, is left
        assert store.reserve_used == 1
        assert (state / SEQ_RESERVE_FILE).stat().st_size >= 3000, "the room left is kept as the reserve"
        for round_ in range(5):
            fill_disk(state)  # the other writer takes whatever is free
            store.write("b", bytes([round_]) * 3000)
            store.write("a", bytes([round_]) * 1000)
        assert (state / "b").read_bytes() == bytes([4]) * 3000
        assert (state / "a").read_bytes() == bytes([4]) * 1000


def test_sparkplug_bdseq_is_written_on_a_completely_full_state_disk(tmp_path: Path) -> None:
    """The bdSeq file goes through the seq state's files and their reserve: on a state disk filled to the last
    byte the next run still continues after the last accepted CONNECT (a repeated bdSeq would let a host take an
    old NDEATH for the current session's)."""
    from gateway.encoders.sparkplug import SparkplugEdgeNode
    from gateway.sparkplug_session import BD_SEQ_FILE, SparkplugSession

    state = tmp_path / "state"
    with mounted_tmpfs(state, size="1m"):
        files = SeqFileStore(state)
        files.write("seq.a.json", b"{}")  # what a gateway writes first: the reserve is made beside it
        assert (state / SEQ_RESERVE_FILE).stat().st_size > 0
        fill_disk(state)
        session = SparkplugSession(SparkplugEdgeNode(group_id="G", edge_node_id="e"), bd_seq_files=files)
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):  # three accepted CONNECTs: bdSeq 0, 1, 2
                session.will_payload()
                session.births()
        assert [entry for entry in logs if entry["event"] == "sparkplug_bdseq_not_saved"] == []
        assert (state / BD_SEQ_FILE).read_text() == "2\n"
        after_restart = SparkplugSession(SparkplugEdgeNode(group_id="G", edge_node_id="e"), bd_seq_files=files)
        after_restart.will_payload()
        assert after_restart.node.bd_seq == 3
