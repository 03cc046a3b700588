"""Named failpoints.

Code marks places where faults are interesting: `faults.point("storage.append.before_sync")`
in threads, `await faults.apoint(...)` on the event loop. Each point is off unless
set, by `BOREALIS_FAILPOINTS="name=action;name=action"` at start or the admin RPC at
run time. Actions:

    off          nothing (the default)
    error        raise FailpointError
    sleep(MS)    wait MS milliseconds
    pause        wait until the point is set to something else
    exit         end the process at once (exit status 86), like a crash

An action may start with a percentage, `25%error`: it then fires on that share of
hits, drawn from a generator seeded by `BOREALIS_FAULT_SEED` (printed in the log) so
a run can be replayed. Checking a point that is off costs one dict lookup.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import sys
import threading
import time
from dataclasses import dataclass

from borealis.errors import FailpointError, InvalidRequest
from borealis.log import get_logger

EXIT_STATUS = 86
PAUSE_POLL_S = 0.01

log = get_logger("faults")

_ACTION = re.compile(
    r"^(?:(?P<percent>\d{1,3})%)?(?P<kind>off|error|pause|exit|sleep\((?P<ms>\d+)\))$"
)


@dataclass(frozen=True)
class Action:
    text: str
    kind: str
    sleep_ms: int = 0
    percent: int = 100


_points: dict[str, Action] = {}
_lock = threading.Lock()
_rng = random.Random()
_seed: int | None = None


def parse(text: str) -> Action:
    match = _ACTION.match(text.strip())
    if not match:
        raise InvalidRequest("bad failpoint action", action=text)
    kind = match["kind"]
    percent = int(match["percent"] or 100)
    if percent > 100:
        raise InvalidRequest("failpoint percentage above 100", action=text)
    sleep_ms = int(match["ms"]) if match["ms"] else 0
    return Action(text.strip(), "sleep" if kind.startswith("sleep") else kind, sleep_ms, percent)


def set_point(name: str, action_text: str) -> None:
    action = parse(action_text)
    with _lock:
        if action.kind == "off":
            _points.pop(name, None)
        else:
            _points[name] = action
    log.info("failpoint set", name=name, action=action.text)


def points() -> dict[str, str]:
    with _lock:
        return {name: action.text for name, action in _points.items()}


def configure_from_env() -> None:
    """Reads BOREALIS_FAULT_SEED and BOREALIS_FAILPOINTS; call once at process start."""
    global _seed
    seed_text = os.environ.get("BOREALIS_FAULT_SEED")
    _seed = int(seed_text) if seed_text else random.SystemRandom().randrange(2**32)
    _rng.seed(_seed)
    spec = os.environ.get("BOREALIS_FAILPOINTS", "")
    for item in filter(None, (part.strip() for part in spec.split(";"))):
        name, separator, action = item.partition("=")
        if not separator:
            raise InvalidRequest("BOREALIS_FAILPOINTS items must be name=action", item=item)
        set_point(name.strip(), action)
    if _points:
        log.info("failpoints armed", seed=_seed, points=",".join(sorted(_points)))


def _fires(name: str) -> Action | None:
    action = _points.get(name)
    if action is None:
        return None
    if action.percent < 100:
        with _lock:
            if _rng.randrange(100) >= action.percent:
                return None
    log.info("failpoint hit", name=name, action=action.text)
    if action.kind == "error":
        raise FailpointError("failpoint fired", failpoint=name)
    if action.kind == "exit":
        sys.stderr.flush()
        os._exit(EXIT_STATUS)
    return action


def point(name: str) -> None:
    """A failpoint in a thread: sleeps and pauses block the calling thread."""
    if name not in _points:
        return
    action = _fires(name)
    if action is None:
        return
    if action.kind == "sleep":
        time.sleep(action.sleep_ms / 1000)
    elif action.kind == "pause":
        while _points.get(name) is action:
            time.sleep(PAUSE_POLL_S)


async def apoint(name: str) -> None:
    """A failpoint on the event loop: sleeps and pauses yield to other tasks."""
    if name not in _points:
        return
    action = _fires(name)
    if action is None:
        return
    if action.kind == "sleep":
        await asyncio.sleep(action.sleep_ms / 1000)
    elif action.kind == "pause":
        while _points.get(name) is action:
            await asyncio.sleep(PAUSE_POLL_S)
