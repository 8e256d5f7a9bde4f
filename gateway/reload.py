"""Reload planning: what a new tag map changes, so that a SIGHUP restarts only the devices that changed.

Pure: the runtime passes the fingerprints of the old and new plant and the source tasks, and carries the
plan out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel

from gateway.assembly import active_devices
from gateway.tagmap import Plant


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadPlan:
    """What a reload changes: pure, from the old and the new plant and the sources the new one needs."""

    added: frozenset[str]
    removed: frozenset[str]
    changed: frozenset[str]
    sources_to_stop: tuple[str, ...]
    sources_to_start: tuple[str, ...]
    sections_ignored: tuple[str, ...]
    """Top-level sections whose change needs a restart (they are not applied by a reload)."""


@dataclass(frozen=True, slots=True)
class PlantFingerprint:
    """A digest per top-level section and per enabled device: what a reload compares.

    The runtime keeps this instead of the tag-map models, which take about 1.2 kB per tag (60 MB at 50,000
    tags) and are not needed once the read plans and encoders are built.
    """

    sections: Mapping[str, bytes]
    devices: Mapping[str, bytes]

    @classmethod
    def of(cls, plant: Plant) -> PlantFingerprint:
        def digest(model: BaseModel) -> bytes:
            return hashlib.blake2b(model.model_dump_json().encode(), digest_size=16).digest()

        return cls(
            sections={name: digest(getattr(plant, name)) for name in RELOADABLE_ONLY_BY_RESTART},
            devices={device.name: digest(device) for device in active_devices(plant)},
        )


RELOADABLE_ONLY_BY_RESTART = ("gateway", "mqtt", "spool", "http")


def plan_reload(
    old: PlantFingerprint,
    new: PlantFingerprint,
    *,
    running: Mapping[str, frozenset[str]],
    wanted: Mapping[str, frozenset[str]],
) -> ReloadPlan:
    """Which devices changed and which source tasks to stop and start so that only they are restarted.

    ``running`` and ``wanted`` map source task names to their device names, for the old and the new
    plant. A source keeps running when the new plant wants the same task with the same devices and
    none of them changed; every other running source stops and every other wanted one starts.
    """
    old_devices, new_devices = old.devices, new.devices
    both = old_devices.keys() & new_devices.keys()
    changed = frozenset(name for name in both if old_devices[name] != new_devices[name])
    keep = {name for name, devices in wanted.items() if running.get(name) == devices and not devices & changed}
    ignored = tuple(
        section for section in RELOADABLE_ONLY_BY_RESTART if old.sections[section] != new.sections[section]
    )
    return ReloadPlan(
        added=frozenset(new_devices.keys() - old_devices.keys()),
        removed=frozenset(old_devices.keys() - new_devices.keys()),
        changed=changed,
        sources_to_stop=tuple(sorted(name for name in running if name not in keep)),
        sources_to_start=tuple(sorted(name for name in wanted if name not in keep)),
        sections_ignored=ignored,
    )




def without_tags(plant: Plant) -> Plant:
    """``plant`` with every device's tag list emptied (not validated again): the runtime's view once running."""
    slim = tuple(device.model_copy(update={"tags": ()}) for device in plant.devices)
    return plant.model_copy(update={"devices": slim})
