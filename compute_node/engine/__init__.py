"""The instance's SQL engine: SQLite (APSW) on the volume VFS.

- `source`: the PageSource protocol (the volume as the engine sees it) and
  CommitChanges (what a commit hands over).
- `vfs`: the APSW VFS and its files: dirty maps, the commit point, redo deltas,
  read point pins and old versions for pinned readers.
- `connection`: opening SQLite connections with the required settings.
- `memory`: an in-memory, versioned PageSource for tests and benchmarks.
- `diagnostics`: a file class that counts VFS callbacks.
- `sessions`: the Engine (writer and reader connections on worker threads) and
  client sessions, whose results are released only once durable.

Only this package imports apsw (DESIGN.md section 2).
"""

from __future__ import annotations

from borealis.errors import SerializationFailure, SnapshotTooOld
from compute_node.engine.connection import EngineConnection, LockingMode, open_connection
from compute_node.engine.sessions import Engine, Result, Session, StatementError
from compute_node.engine.source import CommitChanges, PageSource, PageWrite
from compute_node.engine.vfs import VolumeFile, VolumeVFS

__all__ = [
    "CommitChanges",
    "Engine",
    "Result",
    "Session",
    "StatementError",
    "EngineConnection",
    "LockingMode",
    "PageSource",
    "PageWrite",
    "SerializationFailure",
    "SnapshotTooOld",
    "VolumeFile",
    "VolumeVFS",
    "open_connection",
]
