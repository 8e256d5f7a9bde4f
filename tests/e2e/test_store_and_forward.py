"""Nothing lost: broker outages, a stop while the broker is away, and the spool cap, on real processes.

Simulators (two processes), Mosquitto and ``cellgate run`` each run as their own process. The subscriber
uses a persistent session on a broker with persistence, so what the gateway publishes while the test's
subscriber is reconnecting is queued for it: any hole it sees is the gateway's.
"""

from __future__ import annotations

import itertools
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.sinks.spool import Spool
from tests.support.gateway import GatewayProcess
from tests.support.outage import DemoLine, data_messages, demo_line, holes
from tests.support.waiting import wait_until

OUTAGE_S = 30.0


class Rig(DemoLine):
    def gateway(self, **env: str) -> GatewayProcess:
        return GatewayProcess(config=self.config, env={**self.env, **env}, state_dir=self.workdir / "state")


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with demo_line(tmp_path, f"sf{uuid.uuid4().hex[:8]}", Rig) as line:
        yield line


def historical_count(rig: Rig) -> int:
    return sum(1 for bodies in data_messages(rig.subscriber.messages).values() for b in bodies if b.get("historical"))


def test_broker_outage_then_stop_while_away_then_restart_loses_nothing(rig: Rig) -> None:
    gateway = rig.gateway()
    gateway.start()
    try:
        heartbeat = f"{rig.prefix}/formation/hall-a/rack-01/heartbeat"
        wait_until(lambda: len(rig.subscriber.on(heartbeat)) >= 3, 30, "live data before the outage")

        # 1. The broker goes away for OUTAGE_S mid-stream and comes back on the same port.
        rig.broker.stop()
        outage_started = time.monotonic()
        time.sleep(OUTAGE_S)
        assert gateway.running, "the gateway must ride through a broker outage"
        rig.broker.start()
        outage_s = time.monotonic() - outage_started
        # Replay: the gateway reconnects (backoff <= 10 s) and sends the spool; the subscriber's session
        # queued whatever came before it was back.
        wait_until(lambda: historical_count(rig) > 0, 40, "replayed messages")
        done = gateway.wait_for_event("spool_replay_done", 90)
        assert int(str(done["replayed"])) > 0 and int(str(done["dropped_by_cap"])) == 0
        wait_until(lambda: not holes(data_messages(rig.subscriber.messages)), 30, "every seq to arrive")

        per_topic = data_messages(rig.subscriber.messages)
        replayed = {topic: [b for b in bodies if b.get("historical")] for topic, bodies in per_topic.items()}
        # The rack's heartbeat changes every second and is polled every second: the outage's samples are
        # all there, replayed, in order.
        beats = [int(str(b["seq"])) for b in replayed[heartbeat]]
        assert beats == sorted(beats), "replayed messages of one tag arrive in order"
        assert outage_s - 4 <= len(set(beats)) <= outage_s + 12, (len(set(beats)), outage_s)
        for topic, bodies in replayed.items():
            seqs = [int(str(b["seq"])) for b in bodies]
            assert seqs == sorted(seqs), f"{topic}: replay out of order"

        # 2. The broker goes away again; the gateway is stopped while it is away.
        before_stop = len(rig.subscriber.messages)
        rig.broker.stop()
        time.sleep(4)
        stop_started = time.monotonic()
        assert gateway.stop(timeout_s=20) == 0
        assert time.monotonic() - stop_started < 10, "SIGTERM to exit within 10 s"
        kept = gateway.wait_for_event("spool_kept_for_next_start", 1)
        assert int(str(kept["messages"])) > 0
        stopped = gateway.wait_for_event("gateway_stopped", 1)
        assert int(str(stopped["spool_kept"])) == int(str(kept["messages"]))
    finally:
        gateway.close()

    # 3. Broker back, gateway restarted on the same state directory: the spool is replayed and every
    #    topic's seq runs on from before the stop without a hole.
    rig.broker.start()
    restarted = rig.gateway()
    restarted.start()
    try:
        starting = restarted.wait_for_event("gateway_starting", 20)
        assert starting["previous_stop"] == "clean"
        assert int(str(starting["spooled"])) > 0
        wait_until(lambda: len(rig.subscriber.messages) > before_stop + 200, 40, "data after the restart")
        wait_until(lambda: not holes(data_messages(rig.subscriber.messages)), 60, "every seq across the restart")
        restarted.wait_for_event("spool_replay_done", 30)
        assert restarted.stop() == 0
    finally:
        restarted.close()
    per_topic = data_messages(rig.subscriber.messages)
    assert not holes(per_topic)
    # Numbering continued across the restart instead of starting again at 1.
    assert all(sum(1 for b in bodies if b["seq"] == 1) <= 1 for bodies in per_topic.values() if bodies)


def test_spool_cap_drops_the_oldest_counts_them_and_keeps_running(rig: Rig) -> None:
    # The smallest cap the tag map takes (1 MB, a few seconds of the demo map's messages) so a short outage
    # overflows it.
    gateway = rig.gateway(CELLGATE_SPOOL__MAX_MB="1")
    gateway.start()
    try:
        heartbeat = f"{rig.prefix}/formation/hall-a/rack-01/heartbeat"
        wait_until(lambda: len(rig.subscriber.on(heartbeat)) >= 2, 30, "live data")
        rig.broker.stop()
        full = gateway.wait_for_event("spool_full_dropping_oldest", 30)
        assert int(str(full["dropped"])) > 0
        rss_at_cap = gateway.rss_kb()
        time.sleep(8)
        assert gateway.running
        growth_kb = gateway.rss_kb() - rss_at_cap
        assert growth_kb < 8_000, f"memory grew by {growth_kb} kB while the spool was full"
        # Logged once per episode, not per dropped message.
        assert sum(1 for e in gateway.events() if e.get("event") == "spool_full_dropping_oldest") == 1
        spool_file = rig.workdir / "state" / "spool.db"
        assert spool_file.stat().st_size < 3_000_000

        rig.broker.start()
        done = gateway.wait_for_event("spool_replay_done", 40)
        assert int(str(done["dropped_by_cap"])) > 0

        def live_after_replay() -> bool:
            bodies = data_messages(rig.subscriber.messages)[heartbeat]
            replayed = [int(str(b["seq"])) for b in bodies if b.get("historical")]
            live = [int(str(b["seq"])) for b in bodies if not b.get("historical")]
            return bool(replayed) and any(seq > max(replayed) for seq in live)

        wait_until(live_after_replay, 15, "live data after the replay")
        assert gateway.stop() == 0
    finally:
        gateway.close()
    spool = Spool(rig.workdir / "state" / "spool.db", max_bytes=10**6)
    try:
        assert spool.count == 0  # what survived the cap was replayed and acknowledged
    finally:
        spool.close()
    # What was kept is the newest: the replayed heartbeats run without a hole up to the first live one after
    # the outage, and the oldest of the outage (right after the last live one before it) were dropped.
    bodies = data_messages(rig.subscriber.messages)[heartbeat]
    replayed = sorted({int(str(b["seq"])) for b in bodies if b.get("historical")})
    live = sorted({int(str(b["seq"])) for b in bodies if not b.get("historical")})
    assert replayed == list(range(replayed[0], replayed[-1] + 1))
    assert min(s for s in live if s > replayed[-1]) == replayed[-1] + 1
    assert max(s for s in live if s < replayed[0]) < replayed[0] - 1, "the oldest of the outage were dropped"


@pytest.mark.serial  # bounds the coater's pause in seconds: run alone, after the parallel part
def test_sighup_broken_file_keeps_running_valid_file_restarts_only_the_changed_device(rig: Rig) -> None:
    gateway = rig.gateway()
    gateway.start()
    good_text = rig.config.read_text(encoding="utf-8")
    try:
        heartbeat = f"{rig.prefix}/formation/hall-a/rack-01/heartbeat"
        wait_until(lambda: len(rig.subscriber.on(heartbeat)) >= 2, 30, "live data")

        # A broken file: every problem logged with FILE:LINE, the old map keeps running.
        rig.config.write_text(good_text.replace("interval_ms: 1000", "interval_ms: fast", 1), encoding="utf-8")
        mark = len(gateway.events())
        gateway.send_signal(signal.SIGHUP)
        problem = gateway.wait_for_event("reload_rejected", 15, after=mark)
        assert f"{rig.config}:" in str(problem["problem"]) and "interval_ms" in str(problem["problem"])
        count = len(rig.subscriber.on(heartbeat))
        wait_until(lambda: len(rig.subscriber.on(heartbeat)) >= count + 2, 10, "polling on the old map")
        assert gateway.running

        # A valid change to the rack only: the rack's connection restarts, the coater never pauses.
        changed = good_text.replace("b2 a channel is in protection.", "re-wired", 1)
        assert changed != good_text
        rig.config.write_text(changed, encoding="utf-8")
        mark = len(gateway.events())
        reload_at = time.monotonic()
        gateway.send_signal(signal.SIGHUP)
        applied = gateway.wait_for_event("reload_applied", 15, after=mark)
        assert applied["changed"] == ["rack-01"]
        assert applied["added"] == [] and applied["removed"] == []
        restarted = applied["sources_restarted"]
        # The changed rack's connection and its event runner (config/demo.yaml gives it events), nothing else.
        assert isinstance(restarted, list) and len(restarted) == 2
        assert str(restarted[0]) == "events[rack-01]" and str(restarted[1]).startswith("modbus[")
        rack_meta = f"{rig.prefix}/formation/hall-a/rack-01/_meta"
        wait_until(
            lambda: any(b"re-wired" in m.payload for m in rig.subscriber.on(rack_meta)), 10, "the new rack _meta"
        )
        count = len(rig.subscriber.on(heartbeat))
        wait_until(lambda: len(rig.subscriber.on(heartbeat)) >= count + 2, 15, "the rack polling again")
        time.sleep(2)
        coater = sorted(
            m.at for m in rig.subscriber.messages
            if "/coater-01/" in m.topic and "/_" not in m.topic and reload_at - 2 <= m.at <= reload_at + 4
        )
        assert coater, "coater messages around the reload"
        gaps = [later - earlier for earlier, later in itertools.pairwise(coater)]
        assert max(gaps) < 1.0, f"the coater paused {max(gaps):.2f} s during a reload that did not concern it"
        assert gateway.running
    finally:
        rig.config.write_text(good_text, encoding="utf-8")
        assert gateway.stop() == 0
        gateway.close()
