"""Metrics in the Prometheus text exposition format.

Counters and gauges are declared once with their help text, then updated with
labels as keywords. Gauges whose value lives elsewhere (an SCL per segment) are
read at render time through collectors.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable

HTTP_READ_TIMEOUT_S = 5.0

Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, dict[str, object], float]


class Metrics:
    def __init__(self, namespace: str) -> None:
        self._namespace = namespace
        self._kinds: dict[str, tuple[str, str]] = {}
        self._values: dict[tuple[str, Labels], float] = {}
        self._collectors: list[Callable[[], Iterable[Sample]]] = []
        self._lock = threading.Lock()

    def declare(self, name: str, kind: str, help_text: str) -> None:
        assert kind in ("counter", "gauge")
        self._kinds[name] = (kind, help_text)

    def collector(self, collect: Callable[[], Iterable[Sample]]) -> None:
        self._collectors.append(collect)

    def inc(self, name: str, value: float = 1, **labels: object) -> None:
        assert name in self._kinds, name
        key = (name, _labels(labels))
        with self._lock:
            self._values[key] = self._values.get(key, 0) + value

    def set(self, name: str, value: float, **labels: object) -> None:
        assert name in self._kinds, name
        with self._lock:
            self._values[(name, _labels(labels))] = value

    def value(self, name: str, **labels: object) -> float:
        with self._lock:
            return self._values.get((name, _labels(labels)), 0)

    def render(self) -> str:
        with self._lock:
            samples = [
                (name, dict(labels), value) for (name, labels), value in self._values.items()
            ]
        for collect in self._collectors:
            samples.extend(collect())
        lines = []
        for name in sorted(self._kinds):
            kind, help_text = self._kinds[name]
            full = f"{self._namespace}_{name}"
            lines.append(f"# HELP {full} {help_text}")
            lines.append(f"# TYPE {full} {kind}")
            for sample_name, labels, value in sorted(
                samples, key=lambda s: (s[0], sorted(s[1].items()))
            ):
                if sample_name == name:
                    lines.append(f"{full}{_render_labels(labels)} {_render_value(value)}")
        return "\n".join(lines) + "\n"


def _labels(labels: dict[str, object]) -> Labels:
    return tuple(sorted((key, str(value)) for key, value in labels.items()))


def _render_labels(labels: dict[str, object]) -> str:
    if not labels:
        return ""
    inner = ",".join(
        f'{key}="{str(value).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34)).replace(chr(10), chr(92) + "n")}"'
        for key, value in sorted(labels.items())
    )
    return "{" + inner + "}"


def _render_value(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def parse(text: str) -> dict[str, float]:
    """Samples of a rendered text by their full name with labels (for tests and the CLI)."""
    samples = {}
    # Only "\n" ends a line in the format; splitlines() would also split label values.
    for line in text.split("\n"):
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


async def serve_http(metrics: Metrics, host: str, port: int) -> asyncio.Server:
    """A minimal HTTP endpoint answering `GET /metrics` for Prometheus scrapers."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), HTTP_READ_TIMEOUT_S)
            while (await asyncio.wait_for(reader.readline(), HTTP_READ_TIMEOUT_S)) not in (
                b"\r\n",
                b"\n",
                b"",
            ):
                pass  # headers are not needed
            parts = request_line.split()
            if len(parts) >= 2 and parts[0] == b"GET" and parts[1].split(b"?")[0] == b"/metrics":
                status, body = b"200 OK", metrics.render().encode()
            else:
                status, body = b"404 Not Found", b"only GET /metrics is served here\n"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4\r\n"
                b"Content-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(answer, host, port)
