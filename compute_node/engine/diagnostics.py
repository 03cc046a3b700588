"""A VolumeFile that counts its callbacks, for tests and benchmarks (not production:
the counting itself is a Python call per callback)."""

from __future__ import annotations

from collections import Counter

from compute_node.engine.vfs import VolumeFile, VolumeState, VolumeVFS

COUNTED_METHODS = (
    "xRead",
    "xWrite",
    "xFileSize",
    "xTruncate",
    "xSync",
    "xFileControl",
    "xLock",
    "xUnlock",
    "xCheckReservedLock",
    "xSectorSize",
    "xDeviceCharacteristics",
    "xClose",
)


class CountingVolumeFile(VolumeFile):
    """Counts every VFS callback by method name in `calls`."""

    def __init__(self, state: VolumeState, writable: bool) -> None:
        super().__init__(state, writable)
        self.calls: Counter[str] = Counter()


def _counted(name: str):  # type: ignore[no-untyped-def]
    inner = getattr(VolumeFile, name)

    def counted(self: CountingVolumeFile, *args: object) -> object:
        self.calls[name] += 1
        return inner(self, *args)

    counted.__name__ = name
    return counted


for _name in COUNTED_METHODS:
    setattr(CountingVolumeFile, _name, _counted(_name))


class CountingVolumeVFS(VolumeVFS):
    """Counts the VFS-level callbacks (SQLite asks xAccess for a hot journal and a
    WAL file at the start of every NORMAL-mode transaction) in `calls`."""

    calls: Counter[str]

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.calls = Counter()
        kwargs.setdefault("file_class", CountingVolumeFile)
        super().__init__(*args, **kwargs)

    def xAccess(self, pathname: str, flags: int) -> bool:
        self.calls["xAccess"] += 1
        return super().xAccess(pathname, flags)

    def xOpen(self, name, flags):  # type: ignore[no-untyped-def]
        self.calls["xOpen"] += 1
        return super().xOpen(name, flags)

    def xFullPathname(self, name: str) -> str:
        self.calls["xFullPathname"] += 1
        return super().xFullPathname(name)

    def xDelete(self, filename: str, syncdir: bool) -> None:
        self.calls["xDelete"] += 1
        super().xDelete(filename, syncdir)
