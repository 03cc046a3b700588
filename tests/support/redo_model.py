"""A generator of valid redo chains and an in-test reference model of page images.

The model applies the same deltas to plain byte arrays, independently of the
storage node's materialisation, and remembers every page image at every LSN.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from borealis import redo
from borealis.ids import Lsn


@dataclass
class PageHistory:
    lsns: list[int] = field(default_factory=list)
    images: list[bytes] = field(default_factory=list)

    def at(self, lsn: int) -> tuple[bytes, int]:
        """(image, page_lsn) as of lsn: the newest version at or below it."""
        result = (redo.ZERO_PAGE, 0)
        for version_lsn, image in zip(self.lsns, self.images, strict=True):
            if version_lsn > lsn:
                break
            result = (image, version_lsn)
        return result


class RedoModel:
    """Writes random records for one PG (pages first_page .. first_page+page_count-1)."""

    def __init__(
        self,
        first_page: int,
        page_count: int,
        seed: int = 0,
        lsn_start: int = 0,
        lsn_stride: int = 1,
    ) -> None:
        self.random = random.Random(seed)
        self.first_page = first_page
        self.page_count = page_count
        self.lsn = lsn_start
        self.lsn_stride = lsn_stride
        self.last_lsn_pg = 0
        self.pages: dict[int, PageHistory] = {}
        self.encoded: list[bytes] = []

    def current(self, page: int) -> bytes:
        history = self.pages.get(page)
        return history.images[-1] if history and history.images else redo.ZERO_PAGE

    def next_record(
        self, page: int | None = None, image: bool | None = None, cpl: bool = True
    ) -> bytes:
        if page is None:
            page = self.first_page + self.random.randrange(self.page_count)
        history = self.pages.setdefault(page, PageHistory())
        old = self.current(page)
        new = bytearray(old)
        if image is None:
            image = not history.lsns or self.random.random() < 0.05
        for _ in range(self.random.randint(1, 4)):
            offset = self.random.randrange(redo.PAGE_SIZE_BYTES - 64)
            length = self.random.randint(1, 64)
            new[offset : offset + length] = self.random.randbytes(length)
        new_bytes = bytes(new)
        self.lsn += self.random.randint(1, self.lsn_stride)
        if image:
            record = redo.RedoRecord(
                lsn=Lsn(self.lsn),
                prev_lsn_volume=Lsn(self.lsn - 1),
                prev_lsn_pg=Lsn(self.last_lsn_pg),
                prev_lsn_page=Lsn(history.lsns[-1] if history.lsns else 0),
                page=page,
                kind=redo.Kind.IMAGE,
                payload=new_bytes,
                cpl=cpl,
                commit_time_us=1_700_000_000_000_000 + self.lsn if cpl else 0,
            )
        else:
            record = redo.RedoRecord(
                lsn=Lsn(self.lsn),
                prev_lsn_volume=Lsn(self.lsn - 1),
                prev_lsn_pg=Lsn(self.last_lsn_pg),
                prev_lsn_page=Lsn(history.lsns[-1] if history.lsns else 0),
                page=page,
                kind=redo.Kind.DELTA,
                payload=redo.delta_payload(redo.diff(old, new_bytes))
                if old != new_bytes
                else redo.delta_payload([(0, new_bytes[:1])]),
                cpl=cpl,
                commit_time_us=1_700_000_000_000_000 + self.lsn if cpl else 0,
            )
        self.last_lsn_pg = self.lsn
        history.lsns.append(self.lsn)
        history.images.append(new_bytes)
        data = redo.encode(record)
        self.encoded.append(data)
        return data

    def records(self, count: int) -> list[bytes]:
        return [self.next_record() for _ in range(count)]

    def page_at(self, page: int, lsn: int) -> tuple[bytes, int]:
        history = self.pages.get(page)
        return history.at(lsn) if history else (redo.ZERO_PAGE, 0)


def rewind(model: RedoModel, above: int, lsn_floor: int) -> None:
    """Makes `model` forget its records above `above`, as a truncation does on storage.

    Later records continue the PG's chain from the newest record at or below `above`
    and get LSNs above `lsn_floor` (the truncation range's upper end).
    """
    for history in model.pages.values():
        kept = sum(1 for lsn in history.lsns if lsn <= above)
        del history.lsns[kept:]
        del history.images[kept:]
    model.encoded = [data for data in model.encoded if redo.HEADER.unpack_from(data)[1] <= above]
    model.last_lsn_pg = max((redo.HEADER.unpack_from(data)[1] for data in model.encoded), default=0)
    model.lsn = lsn_floor
