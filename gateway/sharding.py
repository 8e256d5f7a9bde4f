"""Split one tag map across N gateways: ``cellgate run --shard K/N`` reads only the devices of shard K.

Every box runs the same tag map with its own K; each device belongs to exactly one shard, decided by a stable
hash of its name alone. The hash must give the same answer on every box, in every process and in every Python
version, so it is BLAKE2b over the UTF-8 name, never ``hash()`` (salted per process by PYTHONHASHSEED).

Adding or removing a device never moves another device. Changing N moves devices (plain modulo, not a
consistent hash): a re-shard is a planned change on every box anyway.

Worked example (a test pins these): with N = 4, ``rack-01`` is in shard 2 and ``coater-01`` in shard 4.
"""

from __future__ import annotations

import hashlib

from gateway.tagmap import Plant

SHARD_HASH_BYTES = 8


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with 1 <= K <= N; ValueError with a message that says what is wrong."""
    shard_text, slash, count_text = text.strip().partition("/")
    if not slash:
        raise ValueError(f"shard {text!r}: expected K/N, e.g. 2/4 (this box reads shard 2 of 4)")
    try:
        shard = int(shard_text)
        count = int(count_text)
    except ValueError:
        raise ValueError(f"shard {text!r}: K and N must be whole numbers, e.g. 2/4") from None
    if count < 1:
        raise ValueError(f"shard {text!r}: N (the number of shards) must be at least 1")
    if not 1 <= shard <= count:
        raise ValueError(f"shard {text!r}: K must be between 1 and N={count} (shards are numbered from 1)")
    return shard, count


def shard_of(device_name: str, shard_count: int) -> int:
    """The shard (1..shard_count) that reads the device called ``device_name``; the same on every box."""
    if shard_count < 1:
        raise ValueError(f"shard count must be at least 1, got {shard_count}")
    digest = hashlib.blake2b(device_name.encode("utf-8"), digest_size=SHARD_HASH_BYTES).digest()
    return int.from_bytes(digest, "big") % shard_count + 1


def select_shard(plant: Plant, shard: int, shard_count: int) -> Plant:
    """``plant`` with only the devices of ``shard`` (of ``shard_count``), in tag-map order.

    Disabled devices of the shard stay in it (still disabled), so ``cellgate check`` with a shard shows the same
    picture as the full map. A shard may be empty when N is larger than the number of devices.
    """
    if not 1 <= shard <= shard_count:
        raise ValueError(f"shard {shard}/{shard_count}: K must be between 1 and N")
    devices = tuple(device for device in plant.devices if shard_of(device.name, shard_count) == shard)
    if shard_count == 1:
        return plant.model_copy(update={"devices": devices})
    # Each shard is a gateway of its own: its own status topic, and a client id the broker does not confuse
    # with another box's (two clients with one id disconnect each other).
    gateway_id = f"{plant.gateway.id}-{shard}of{shard_count}"
    mqtt = plant.mqtt
    if mqtt.client_id == f"cellgate-{plant.gateway.id}":
        mqtt = mqtt.model_copy(update={"client_id": f"cellgate-{gateway_id}"})
    else:
        mqtt = mqtt.model_copy(update={"client_id": f"{mqtt.client_id}-{shard}of{shard_count}"})
    gateway = plant.gateway.model_copy(update={"id": gateway_id})
    return plant.model_copy(update={"devices": devices, "gateway": gateway, "mqtt": mqtt})
