"""moto's server mode as a real S3 (and KMS) HTTP endpoint for tests.

`with moto_server(port) as endpoint_url:` starts `python -m moto.server -p PORT` in a
subprocess, polls it until it answers HTTP, yields `http://127.0.0.1:PORT`, and
always stops it (SIGTERM, then SIGKILL after a deadline).
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from borealis.wait import wait_until

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
POLL_TIMEOUT_S = 1.0


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=POLL_TIMEOUT_S):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except OSError:
        return False


@contextmanager
def moto_server(port: int, log_path: Path | None = None) -> Iterator[str]:
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    log_file = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:

        def ready() -> bool:
            # An exit ends the wait at once (wait_until would retry a raise).
            return process.poll() is not None or _answers(url + "/moto-api/")

        wait_until(ready, START_TIMEOUT_S, interval_s=0.1, what="moto server to answer")
        if process.poll() is not None:
            raise AssertionError(f"moto server exited with status {process.returncode}")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log_path is not None:
            log_file.close()  # type: ignore[union-attr]
