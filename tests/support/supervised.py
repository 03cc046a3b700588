"""A LocalCluster run by a real Supervisor and its ControlPlane gRPC server, in the
test's process: what the control plane process does, with the policies a test sets."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from control_plane.__main__ import serve
from control_plane.supervisor import Supervisor
from deploy.local import LocalCluster


@contextmanager
def supervised(
    cluster: LocalCluster, supervisor: Supervisor, port: int, expected_errors: tuple[str, ...]
) -> Iterator[None]:
    """Starts the cluster under `supervisor` (serving ControlPlane on `port`), and
    stops everything on exit, even when the test failed. Then no process may have
    logged an ERROR line other than those containing one of `expected_errors`."""
    server, _ = serve(port, supervisor)
    thread = threading.Thread(target=supervisor.run, daemon=True)
    try:
        supervisor.start()
        thread.start()
        yield
    finally:
        supervisor.stopping.set()
        if thread.is_alive():
            thread.join(60)
        server.stop(0)
        cluster.stop(immediate=True)
    errors = [
        f"{each.name}: {line}"
        for each in cluster.processes()
        for line in each.error_lines()
        if not any(expected in line for expected in expected_errors)
    ]
    assert not errors, "unexpected ERROR lines:\n" + "\n".join(errors[:40])
