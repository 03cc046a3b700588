"""Pins on a volume's backup: snapshots and clones (DESIGN.md section 11).

A snapshot names an LSN of a backed-up volume; a copy-on-write clone reads the
page images of the volume's image sets at its clone point. Both live as small
JSON objects beside the volume's backup, so that they survive the cluster:

    volumes/NAME/snapshots/SNAPSHOT.json     a snapshot: its LSN and commit time
    volumes/NAME/clones/CLONE.json           a clone: its LSN and the image set
                                             bases (per PG) its segments read

Backup retention must keep what a pin needs: `keep_pinned` lowers, per PG, the
image set base retention keeps (backup_format.retention_keep) to the base a
restore to the lowest pinned LSN starts from, so that neither that image set nor
any log above it is deleted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from borealis import backup_format as layout
from borealis.errors import Corruption, InvalidRequest
from borealis.object_store import ObjectStore

SNAPSHOTS = "snapshots"
CLONES = "clones"
# Letters, digits, '.', '_' and '-'; it is a key part, so no '/'.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def check_name(name: str, what: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidRequest(
            f"a {what} name is 1 to 63 letters, digits, '.', '_' or '-' (starting with a "
            "letter or digit)",
            name=name,
        )
    return name


def snapshot_key(volume_name: str, snapshot: str) -> str:
    return f"{layout.volume_prefix(volume_name)}{SNAPSHOTS}/{check_name(snapshot, 'snapshot')}.json"


def clone_key(volume_name: str, clone: str) -> str:
    return f"{layout.volume_prefix(volume_name)}{CLONES}/{check_name(clone, 'clone')}.json"


@dataclass(frozen=True)
class Snapshot:
    name: str
    volume_name: str
    lsn: int
    commit_time_us: int
    created_us: int

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Snapshot:
        return cls(**_object(data, "snapshot"))


@dataclass(frozen=True)
class CloneRef:
    """A clone of the volume: the segments of the clone (`clone_volume_name`'s
    cluster) read the parent's page images of these image sets."""

    name: str
    volume_name: str
    clone_volume_name: str
    lsn: int
    commit_time_us: int
    created_us: int
    # PG -> image set base the clone's segment of that PG reads (0: none).
    bases: dict[int, int] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes) -> CloneRef:
        values = _object(data, "clone reference")
        values["bases"] = {int(pg): int(base) for pg, base in values.get("bases", {}).items()}
        return cls(**values)


def _object(data: bytes, what: str) -> dict:
    try:
        values = json.loads(data)
    except ValueError:
        raise Corruption(f"backup {what} is not JSON") from None
    if not isinstance(values, dict):
        raise Corruption(f"backup {what} is not a JSON object")
    return values


def list_snapshots(objects: ObjectStore, volume_name: str) -> list[Snapshot]:
    prefix = f"{layout.volume_prefix(volume_name)}{SNAPSHOTS}/"
    return [Snapshot.from_json(objects.get(key)) for key in objects.list(prefix)]


def list_clones(objects: ObjectStore, volume_name: str) -> list[CloneRef]:
    prefix = f"{layout.volume_prefix(volume_name)}{CLONES}/"
    return [CloneRef.from_json(objects.get(key)) for key in objects.list(prefix)]


def pinned_lsns(objects: ObjectStore, volume_name: str) -> list[int]:
    """The LSNs of the volume a restore or a clone still needs, ascending: every
    snapshot's and every clone's. Blocking (call through asyncio.to_thread)."""
    snapshots = list_snapshots(objects, volume_name)
    clones = list_clones(objects, volume_name)
    return sorted({each.lsn for each in snapshots} | {each.lsn for each in clones})


def keep_pinned(
    keep: Mapping[int, int],
    image_sets: Mapping[int, list[layout.ImageSet]],
    pinned: Iterable[int],
) -> dict[int, int]:
    """Per PG, the image set base retention keeps, lowered so that a restore (or a
    clone's reads) at every pinned LSN still finds its history: the newest base at
    or below the lowest pin (0, keeping all of the PG, when there is none)."""
    lowest = min(pinned, default=None)
    if lowest is None:
        return dict(keep)
    return {
        pg: min(
            base,
            max(
                (each.base_lsn for each in image_sets.get(pg, []) if each.base_lsn <= lowest),
                default=0,
            ),
        )
        for pg, base in keep.items()
    }
