"""The per-byte diff borealis.redo.diff started as: the oracle its tests compare the
fast diff with, and the baseline bench/engine_vfs.py times it against."""

from __future__ import annotations

from borealis.redo import PAGE_SIZE_BYTES


def reference_diff(old: bytes, new: bytes, gap_bytes_max: int = 8) -> list[tuple[int, bytes]]:
    ranges: list[tuple[int, bytes]] = []
    if old == new:
        return ranges
    start = -1
    last_diff = -1
    for index in range(PAGE_SIZE_BYTES):
        if old[index] != new[index]:
            if start < 0:
                start = index
            elif index - last_diff > gap_bytes_max:
                ranges.append((start, new[start : last_diff + 1]))
                start = index
            last_diff = index
    ranges.append((start, new[start : last_diff + 1]))
    return ranges
