"""The fast path's handling of each kind of Publish response, on bytes asyncua's own encoder wrote (what an asyncua
server sends): data changes, a keep-alive, a bad status change, another subscription's response; and its
feature check on the installed asyncua."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from asyncua import ua
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.ua_binary import struct_to_binary

from gateway.schema import Quality
from gateway.sources.base import RawReading
from gateway.sources.opcua_fastpath import FastSubscription, SubscriptionRevision, fast_path_unavailable

MOMENT = datetime(2026, 11, 26, 12, 0, 0, 500000, tzinfo=UTC)
SUBSCRIPTION = 7


@dataclass
class Stats:
    fast_publish_responses: int = 0
    asyncua_publish_responses: int = 0
    notifications: int = 0
    unknown_handles: int = 0


@dataclass
class Taken:
    readings: list[RawReading] = field(default_factory=list)
    publishes: list[int] = field(default_factory=list)

    def push(self, readings: Sequence[RawReading]) -> None:
        self.readings.extend(readings)


def subscription(taken: Taken, stats: Stats) -> FastSubscription:
    return FastSubscription(
        None,  # type: ignore[arg-type]  # take_response sends nothing
        SubscriptionRevision(subscription_id=SUBSCRIPTION, publishing_interval_ms=100, max_keepalive_count=10),
        tags_by_handle={1: ("speed",), 2: ("recipe", "recipe_copy")},
        push=taken.push,
        on_publish=taken.publishes.append,
        stats=stats,
    )


def response(notifications: list[object], *, subscription_id: int = SUBSCRIPTION, sequence_number: int = 3) -> bytes:
    message = ua.PublishResponse()
    message.Parameters = ua.PublishResult(
        SubscriptionId=subscription_id,
        NotificationMessage=ua.NotificationMessage(
            SequenceNumber=sequence_number, PublishTime=MOMENT, NotificationData=notifications  # type: ignore[arg-type]
        ),
    )
    return struct_to_binary(message)


def value(variant: ua.Variant, status: int = StatusCodes.Good) -> ua.DataValue:
    return ua.DataValue(variant, ua.StatusCode(ua.UInt32(status)), SourceTimestamp=MOMENT)  # type: ignore[arg-type]


def test_the_installed_asyncua_passes_the_feature_check() -> None:
    assert fast_path_unavailable() is None


def test_data_changes_are_read_by_the_fast_decoder_and_acknowledged() -> None:
    taken, stats = Taken(), Stats()
    items = [
        ua.MonitoredItemNotification(ClientHandle=1, Value=value(ua.Variant(42.5, ua.VariantType.Double))),
        ua.MonitoredItemNotification(ClientHandle=2, Value=value(ua.Variant("NMC811", ua.VariantType.String))),
        ua.MonitoredItemNotification(ClientHandle=9, Value=value(ua.Variant(1, ua.VariantType.Int32))),
    ]
    outcome = subscription(taken, stats).take_response(response([ua.DataChangeNotification(MonitoredItems=items)]))
    assert outcome == (3, True)
    assert [(r.tag, r.value, r.quality, r.ts) for r in taken.readings] == [
        ("speed", 42.5, Quality.GOOD, MOMENT.timestamp()),
        ("recipe", "NMC811", Quality.GOOD, MOMENT.timestamp()),
        ("recipe_copy", "NMC811", Quality.GOOD, MOMENT.timestamp()),
    ]
    assert taken.publishes == [3]
    assert (stats.fast_publish_responses, stats.asyncua_publish_responses) == (1, 0)
    assert (stats.notifications, stats.unknown_handles) == (3, 1)


def test_a_keep_alive_counts_as_publish_activity_and_is_not_acknowledged() -> None:
    taken, stats = Taken(), Stats()
    assert subscription(taken, stats).take_response(response([], sequence_number=4)) == (4, False)
    assert taken.publishes == [0] and taken.readings == []


def test_a_bad_status_change_ends_the_subscription() -> None:
    taken, stats = Taken(), Stats()
    change = ua.StatusChangeNotification(Status=ua.StatusCode(ua.UInt32(StatusCodes.BadTimeout)))
    assert subscription(taken, stats).take_response(response([change])) == "subscription status BadTimeout"
    assert stats.asyncua_publish_responses == 1  # not a plain data change: asyncua's generic decoder read it


def test_data_changes_beside_a_good_status_change_still_arrive() -> None:
    taken, stats = Taken(), Stats()
    uncertain = value(ua.Variant(1.0, ua.VariantType.Double), StatusCodes.UncertainLastUsableValue)
    items = [ua.MonitoredItemNotification(ClientHandle=1, Value=uncertain)]
    good = ua.StatusChangeNotification(Status=ua.StatusCode(ua.UInt32(StatusCodes.Good)))
    outcome = subscription(taken, stats).take_response(
        response([ua.DataChangeNotification(MonitoredItems=items), good])
    )
    assert outcome == (3, True)
    assert [(r.tag, r.value, r.quality, r.status) for r in taken.readings] == [
        ("speed", 1.0, Quality.UNCERTAIN, "UncertainLastUsableValue")
    ]
    assert taken.publishes == [1]


def test_a_response_for_another_subscription_ends_this_one() -> None:
    taken, stats = Taken(), Stats()
    outcome = subscription(taken, stats).take_response(response([], subscription_id=99))
    assert outcome == f"publish response for subscription 99, not {SUBSCRIPTION}"


def test_a_truncated_response_raises() -> None:
    items = [ua.MonitoredItemNotification(ClientHandle=1, Value=value(ua.Variant(42.5, ua.VariantType.Double)))]
    body = response([ua.DataChangeNotification(MonitoredItems=items)])
    with pytest.raises(Exception):  # noqa: B017 - either decoder's error: the loop logs it and goes on
        subscription(Taken(), Stats()).take_response(body[:40])
