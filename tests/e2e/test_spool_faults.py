"""The spool when things break, on real processes: a full state disk, a read-only one, a damaged spool file,
a kill during a replay, a hung broker.

Simulators, Mosquitto (with persistence) and ``cellgate run`` each run as their own process; an independent
persistent-session subscriber counts ``seq`` per topic. Disk faults use a real tmpfs (CI runs as root; the
tests skip, saying so, only where mounting is refused).
"""

from __future__ import annotations

import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.support.gateway import GatewayProcess
from tests.support.outage import DemoLine, data_messages, demo_line, holes
from tests.support.tmpfs import fill_disk, mounted_tmpfs, remount_read_only
from tests.support.waiting import wait_until

HEARTBEAT = "formation/hall-a/rack-01/heartbeat"
SEQ_WRITE_FAILED = ("seq_reservation_failed", "seq_snapshot_failed")


class Rig(DemoLine):
    def gateway(self, state_dir: Path, **env: str) -> GatewayProcess:
        return GatewayProcess(config=self.config, env={**self.env, **env}, state_dir=state_dir)

    def bodies(self, topic: str) -> list[dict[str, object]]:
        return [orjson.loads(m.payload) for m in self.subscriber.on(f"{self.prefix}/{topic}") if m.payload]

    def live_after(self, count: int) -> bool:
        """More than ``count`` live (not historical) heartbeats have arrived."""
        return sum(1 for body in self.bodies(HEARTBEAT) if not body.get("historical")) > count

    def live_count(self) -> int:
        return sum(1 for body in self.bodies(HEARTBEAT) if not body.get("historical"))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with demo_line(tmp_path, f"sp{uuid.uuid4().hex[:8]}", Rig) as line:
        yield line


def test_a_full_state_disk_drops_the_oldest_replays_the_rest_and_restarts_on_the_full_disk(rig: Rig) -> None:
    """Issue 10 defect 1 (spool on a 2 MB tmpfs, broker down, demo map): the disk filling up drops the oldest
    spooled messages (counted, logged once, reason disk_full) instead of losing the newest; the replay after the
    broker returns ends with spool_replay_done; a restart with the disk still full starts and delivers."""
    state = rig.workdir / "state"
    with mounted_tmpfs(state, size="2m"):
        gateway = rig.gateway(state, CELLGATE_SPOOL__MIN_FREE_MB="0")
        gateway.start()
        try:
            wait_until(lambda: rig.live_after(2), 30, "live data")
            rig.broker.stop()
            full = gateway.wait_for_event("spool_full_dropping_oldest", 60)
            assert full["reason"] == "disk_full"
            time.sleep(3)  # the disk stays full while the newest keep coming
            assert gateway.running
            events = gateway.events()
            assert sum(1 for e in events if e.get("event") == "spool_full_dropping_oldest") == 1
            assert not [e for e in events if e.get("event") in ("spool_messages_lost", "spool_unavailable")]
            live_before_outage = {int(str(b["seq"])) for b in rig.bodies(HEARTBEAT) if not b.get("historical")}

            rig.broker.start()
            done = gateway.wait_for_event("spool_replay_done", 90)
            assert int(str(done["dropped_by_cap"])) > 0
            assert not [e for e in gateway.events() if e.get("event") == "spool_remove_failed"]
            wait_until(lambda: rig.live_count() > len(live_before_outage) + 2, 20, "live data after the replay")
            assert gateway.stop() == 0
            stopped = gateway.wait_for_event("gateway_stopped", 1)
            dropped = stopped["spool_dropped"]
            assert isinstance(dropped, dict) and int(dropped["disk_full"]) > 0
            assert stopped["spool_lost"] == {}, "nothing lost: the oldest made room for the newest"
            assert not [e for e in gateway.events() if e.get("event") in SEQ_WRITE_FAILED], "seq state unwritten"
        finally:
            gateway.close()
        # The newest were kept: the replayed heartbeats run without a hole up to the first live one after the
        # outage, and the oldest of the outage were the ones dropped.
        bodies = rig.bodies(HEARTBEAT)
        replayed = sorted({int(str(b["seq"])) for b in bodies if b.get("historical")})
        live = sorted({int(str(b["seq"])) for b in bodies if not b.get("historical")})
        assert replayed == list(range(replayed[0], replayed[-1] + 1))
        assert min(s for s in live if s > replayed[-1]) == replayed[-1] + 1
        assert max(s for s in live if s < replayed[0]) < replayed[0] - 1, "the oldest of the outage were dropped"

        # Restart with the disk completely full: the gateway starts and delivers live data.
        fill_disk(state)
        count = rig.live_count()
        restarted = rig.gateway(state, CELLGATE_SPOOL__MIN_FREE_MB="0")
        restarted.start()
        try:
            restarted.wait_for_event("gateway_running", 30)
            wait_until(lambda: rig.live_count() > count + 3, 30, "live data after a restart on a full disk")
            assert restarted.stop() == 0
            # The seq reserve file gives the state's writes room: a crash here could not repeat a number.
            assert not [e for e in restarted.events() if e.get("event") in SEQ_WRITE_FAILED]
        finally:
            restarted.close()


def test_a_read_only_state_dir_and_a_damaged_spool_file_never_stop_the_gateway(rig: Rig) -> None:
    """Issue 10 defects 1 and 4: a read-only state directory starts (live data only, said loudly) and delivers;
    a spool.db of random bytes is moved aside (named in one log line), the gateway starts and delivers."""
    read_only = rig.workdir / "read-only-state"
    with mounted_tmpfs(read_only, size="1m"):
        remount_read_only(read_only)
        gateway = rig.gateway(read_only)
        gateway.start()
        try:
            unavailable = gateway.wait_for_event("spool_unavailable", 30)
            assert f"{read_only} is not writable" in str(unavailable["error"])
            count = rig.live_count()
            wait_until(lambda: rig.live_count() > count + 3, 30, "live data with a read-only state directory")
            assert gateway.stop() == 0
            stopped = gateway.wait_for_event("gateway_stopped", 1)
            assert stopped["spool_available"] is False
        finally:
            gateway.close()

    damaged = rig.workdir / "damaged-state"
    damaged.mkdir()
    (damaged / "spool.db").write_bytes(random.Random(4).randbytes(200_000))
    gateway = rig.gateway(damaged)
    gateway.start()
    try:
        moved = gateway.wait_for_event("spool_corrupt_moved_aside", 30)
        moved_to = Path(str(moved["moved_to"]))
        assert moved_to.parent == damaged and moved_to.name.startswith("spool.db.corrupt-") and moved_to.exists()
        count = rig.live_count()
        wait_until(lambda: rig.live_count() > count + 3, 30, "live data after a damaged spool")
        starting = gateway.wait_for_event("gateway_starting", 1)
        # previous_stop comes from the seq state files (not spool.db): none here, so this is a new state directory.
        assert starting["previous_stop"] == "new"
        assert gateway.stop() == 0
    finally:
        gateway.close()


def test_kill_during_a_replay_resends_at_most_about_one_second_of_it(rig: Rig) -> None:
    """Issue 10 defect 6 (kill -9 during a replay duplicated everything already replayed): acknowledged replays
    are deleted at least every ACK_FLUSH_S, so after a kill only about a second of the replay comes again."""
    replay_per_s = 2000
    state = rig.workdir / "state"
    gateway = rig.gateway(state, CELLGATE_SPOOL__REPLAY_PER_S=str(replay_per_s))
    gateway.start()
    try:
        wait_until(lambda: rig.live_after(2), 30, "live data")
        rig.broker.stop()
        time.sleep(10)  # spooled: several seconds of replay at replay_per_s
        rig.broker.start()
        gateway.wait_for_event("spool_replay_starting", 30)

        def replayed() -> int:
            return sum(1 for bodies in data_messages(rig.subscriber.messages).values() for b in bodies
                       if b.get("historical"))

        wait_until(lambda: replayed() > 2 * replay_per_s, 30, "a good part of the replay")
        assert not [e for e in gateway.events() if e.get("event") == "spool_replay_done"], "killed mid-replay"
        gateway.send_signal(signal.SIGKILL)
        time.sleep(1)
    finally:
        gateway.close()
    restarted = rig.gateway(state, CELLGATE_SPOOL__REPLAY_PER_S=str(replay_per_s))
    restarted.start()
    try:
        restarted.wait_for_event("spool_replay_done", 60)
        time.sleep(2)  # the last PUBACKed messages reach the subscriber
        assert restarted.stop() == 0
    finally:
        restarted.close()
    # A duplicate: the same sample (topic, seq, ts) received more than once.
    samples = Counter(
        (topic, body["seq"], body["ts"])
        for topic, bodies in data_messages(rig.subscriber.messages).items()
        for body in bodies
    )
    duplicates = sum(count - 1 for count in samples.values() if count > 1)
    # One flush interval (0.5 s) of replay, the in-flight window (100) and a margin for the kill's timing.
    assert duplicates <= replay_per_s * 1.0 + 100, duplicates


@pytest.mark.serial  # no poll may overrun during the stall: a machine loaded by parallel tests would overrun
def test_a_hung_broker_never_blocks_polling_and_leaves_no_hole(rig: Rig) -> None:
    """Issue 10 defect 2 (kill -STOP on Mosquitto): while the broker is hung every batch goes to the spool as it
    comes (no window_wait_ms per batch), the queue never fills, every poll cycle is read, the stuck link is
    found by the PUBACK deadline (mqtt_stuck) and reconnected, and once the broker is back and the replay done
    no seq is missing."""
    stall_s = 12.0
    state = rig.workdir / "state"
    # A queue of about two seconds of the demo map's messages, so a pipeline that waits shows within the stall.
    # A PUBACK deadline well inside the stall, so the stuck link is always found before SIGCONT.
    gateway = rig.gateway(state, CELLGATE_GATEWAY__QUEUE_SIZE="2000", CELLGATE_MQTT__PUBACK_TIMEOUT_S="4")
    gateway.start()
    try:
        wait_until(lambda: rig.live_after(3), 30, "live data")
        before = {topic: max(int(str(b["seq"])) for b in bodies)
                  for topic, bodies in data_messages(rig.subscriber.messages).items()}
        mark = len(gateway.events())
        rig.broker.pause()
        try:
            time.sleep(stall_s)
            assert gateway.running
        finally:
            rig.broker.resume()
        gateway.wait_for_event("spool_replay_done", 90, after=mark)
        wait_until(lambda: not holes(data_messages(rig.subscriber.messages), since=before), 30, "every seq")
        during = gateway.events()[mark:]
        assert not [e for e in during if e.get("event") in ("poll_overrun", "pipeline_stalled")], during[-20:]
        assert [e for e in during if e.get("event") == "mqtt_stuck"], "the stuck link was never detected"
        assert gateway.stop() == 0
        stopped = gateway.wait_for_event("gateway_stopped", 1)
        assert stopped["queue_full_waits"] == 0, "the sources had to wait for the queue"
    finally:
        gateway.close()
    # The rack's heartbeat is polled every second and changes every second: the stall's samples all exist.
    heartbeat = f"{rig.prefix}/{HEARTBEAT}"
    seqs = {int(str(b["seq"])) for b in data_messages(rig.subscriber.messages)[heartbeat]}
    during_stall = [s for s in seqs if s > before[heartbeat]]
    assert len(during_stall) >= stall_s - 3, len(during_stall)
