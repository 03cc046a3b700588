"""The local launcher: a cluster of real processes on one machine.

`borealis up` and the tests start clusters through this same code (as Neon's
tests use `neon_local`). Each process gets its own directory under the cluster's
data directory, a config file written here, a log file, and ports from the
allocator. `cluster.json` in the data directory records what runs where, so
`borealis down` and `status` find the processes again.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from borealis import config as config_module
from borealis import rpc
from borealis.errors import NotFound, Unavailable
from borealis.wait import wait_until
from compute_node.config import ComputeNodeConfig
from deploy.ports import PortAllocator
from storage_node.config import StorageNodeConfig

T = TypeVar("T")

AZS = ("az-a", "az-b", "az-c")
CLUSTER_FILE = "cluster.json"
# The admin user `up` creates, and the one database of the volume.
ADMIN_USER = "borealis"
DATABASE = "borealis"
PASSWORD_FILE = "password"
USERS_FILE = "users.json"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
REPO_ROOT = Path(__file__).resolve().parent.parent


def storage_layout(count: int = 6, azs: tuple[str, ...] = AZS) -> list[tuple[str, str]]:
    """(name, az) of each storage node: s1, s2 in the first AZ, s3, s4 in the next, ..."""
    per_az = max(1, count // len(azs))
    return [(f"s{index + 1}", azs[min(index // per_az, len(azs) - 1)]) for index in range(count)]


@dataclass
class NodeProcess:
    """One OS process of the cluster, started with subprocess (gRPC does not survive fork)."""

    name: str
    argv: list[str]
    directory: Path
    address: str
    env: dict[str, str] = field(default_factory=dict)
    # starting, running, restarting, stopped or failed (the supervisor's view).
    state: str = "stopped"
    process: subprocess.Popen[bytes] | None = None
    pid: int | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "node.log"

    def start(self, wait: bool = True) -> None:
        assert not self.is_running(), f"{self.name} is already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.directory,
                # Its own session: signals to the test runner or the shell do not
                # reach it, and `down` can stop it after this process exits.
                start_new_session=True,
            )
        self.pid = self.process.pid
        if wait:
            self.wait_serving()

    def wait_serving(self, timeout_s: float = START_TIMEOUT_S) -> None:
        def serving() -> bool:
            if not self.is_running():
                raise Unavailable(f"{self.name} exited during start; see {self.log_path}")
            return asyncio.run(rpc.health_status(self.address, 1.0)) == "SERVING"

        try:
            wait_until(serving, timeout_s, interval_s=0.1, what=f"{self.name} to serve")
        except Unavailable as error:
            raise Unavailable(f"{error}; log tail:\n{self.log_tail()}") from None

    def is_running(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return pid_alive(self.pid)

    def signal(self, signum: int) -> None:
        if self.pid is not None and self.is_running():
            os.kill(self.pid, signum)

    def stop(self, immediate: bool = False) -> None:
        """SIGTERM and wait (SIGKILL after a deadline); `immediate` sends SIGKILL at once."""
        if not self.is_running():
            self._reap()
            return
        self.signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
        self.signal(signal.SIGKILL if immediate else signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while self.is_running() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.is_running():
            self.signal(signal.SIGKILL)
            while self.is_running():
                time.sleep(0.02)
        self._reap()

    def kill(self) -> None:
        """kill -9: no shutdown, no flush, as in a crash."""
        self.stop(immediate=True)

    def restart(self, immediate: bool = False) -> None:
        self.stop(immediate)
        self.start()

    def _reap(self) -> None:
        if self.process is not None:
            self.process.wait()
            self.process = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def error_lines(self) -> list[str]:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if "level=error" in line or "Traceback" in line]


def pid_alive(pid: int | None) -> bool:
    """True while the process exists and is not a zombie waiting for its parent to reap it."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class StorageNodeProcess(NodeProcess):
    az: str = ""
    metrics_url: str = ""


@dataclass
class InstanceProcess(NodeProcess):
    """A compute instance (writer or reader)."""

    role: str = "writer"
    metrics_url: str = ""
    pg_host: str = "127.0.0.1"
    pg_port: int = 0

    def url(self, user: str = ADMIN_USER, database: str = DATABASE) -> str:
        """The instance's PostgreSQL endpoint, without a password."""
        return f"postgresql://{user}@{self.pg_host}:{self.pg_port}/{database}"


def _write_private(path: Path, text: str) -> None:
    """Writes a file only its owner may read (created with mode 0600, never wider)."""
    descriptor = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    path.with_suffix(".tmp").replace(path)


def ensure_credentials(data_dir: Path) -> None:
    """Creates the admin user with a generated password on first start: the
    password in DIR/password, its SCRAM verifier (never the password) in
    DIR/users.json, both mode 0600."""
    from borealis.pgwire.scram import make_verifier

    users = data_dir / USERS_FILE
    if users.exists():
        return
    password = secrets.token_urlsafe(18)
    _write_private(data_dir / PASSWORD_FILE, password + "\n")
    _write_private(users, json.dumps({ADMIN_USER: make_verifier(password)}, indent=2) + "\n")


class LocalCluster:
    """A builder (configure, then `start()`) and handle of a local cluster."""

    def __init__(
        self,
        data_dir: Path,
        ports: PortAllocator | None = None,
        storage_nodes: int = 6,
        storage_overrides: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        writer: bool = False,
        instance_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.ports = ports or PortAllocator()
        self.storage_count = storage_nodes
        self.storage_overrides = storage_overrides or {}
        self.env = env or {}
        self.with_writer = writer
        self.instance_overrides = instance_overrides or {}
        self.storage_nodes: list[StorageNodeProcess] = []
        self.instances: list[InstanceProcess] = []
        # Written into cluster.json by whoever supervises the cluster.
        self.control_plane: dict[str, Any] = {}

    def _storage_node(self, name: str, az: str) -> StorageNodeProcess:
        values = {"name": name, "az": az, **self.storage_overrides}
        config, path = self._write_config(StorageNodeConfig, "storage_node", values)
        return self._process_of(config, path)

    def _instance(self, name: str, role: str) -> InstanceProcess:
        values = {
            "name": name,
            "role": role,
            "cluster_file": self.data_dir / CLUSTER_FILE,
            "users_file": self.data_dir / USERS_FILE,
            "database": DATABASE,
            "pg_port": self.ports.allocate(),
            **self.instance_overrides,
        }
        config, path = self._write_config(ComputeNodeConfig, "compute_node", values)
        return self._instance_of(config, path)

    def _write_config(self, cls: type[T], table: str, values: dict[str, Any]) -> tuple[T, Path]:
        """A new process's config (its ports from the allocator) in its own directory."""
        directory = self.data_dir / values["name"]
        ports = {"port": self.ports.allocate(), "metrics_port": self.ports.allocate()}
        config = config_module.build(cls, {"data_dir": directory, **ports, **values})
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{table}.toml"
        path.write_text(f"[{table}]\n" + config_module.to_toml(config))
        return config, path

    def _launch_fields(self, config: Any, module: str, config_path: Path) -> dict[str, Any]:
        """What every process of the cluster is started with."""
        metrics_url = (
            f"http://{config.host}:{config.metrics_port}/metrics" if config.metrics_port else ""
        )
        return {
            "name": config.name,
            "argv": [sys.executable, "-m", module, "--config", str(config_path)],
            "directory": config.data_dir,
            "address": f"{config.host}:{config.port}",
            "env": dict(self.env),
            "metrics_url": metrics_url,
        }

    def _instance_of(self, config: ComputeNodeConfig, config_path: Path) -> InstanceProcess:
        return InstanceProcess(
            **self._launch_fields(config, "compute_node", config_path),
            role=config.role,
            pg_host=config.host,
            pg_port=config.pg_port,
        )

    def _process_of(self, config: StorageNodeConfig, config_path: Path) -> StorageNodeProcess:
        return StorageNodeProcess(
            **self._launch_fields(config, "storage_node", config_path), az=config.az
        )

    def start(self) -> LocalCluster:
        """Starts every process that is not running (all of them the first time):
        the storage nodes, then (once cluster.json names them) the instances."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ensure_credentials(self.data_dir)
        if not self.storage_nodes:
            self.storage_nodes = [
                self._storage_node(name, az) for name, az in storage_layout(self.storage_count)
            ]
        if self.with_writer and not self.instances:
            self.instances = [self._instance("w1", "writer")]
        try:
            for group in (self.storage_nodes, self.instances):
                for process in group:
                    if not process.is_running():
                        process.state = "starting"
                        process.start(wait=False)
                for process in group:
                    process.wait_serving()
                    process.state = "running"
                self.write_cluster_file()
        except BaseException:
            self.stop(immediate=True)
            raise
        return self

    def processes(self) -> list[NodeProcess]:
        return [*self.storage_nodes, *self.instances]

    def stop(self, immediate: bool = False) -> None:
        """Stops the instances first (a writer finishes shipping), then storage."""
        for process in [*self.instances, *self.storage_nodes]:
            process.stop(immediate)
            process.state = "stopped"

    def node(self, name: str) -> StorageNodeProcess:
        for node in self.storage_nodes:
            if node.name == name:
                return node
        raise NotFound("no such node in the cluster", node=name)

    def write_cluster_file(self) -> None:
        """Writes cluster.json, the interface users and scripts read (see docs/operations.md)."""
        document = {
            "data_dir": str(self.data_dir),
            "control_plane": self.control_plane,
            "storage_nodes": [
                {
                    "name": node.name,
                    "az": node.az,
                    "address": node.address,
                    "port": int(node.address.rsplit(":", 1)[1]),
                    "metrics_url": node.metrics_url,
                    "pid": node.pid,
                    "state": node.state,
                    "directory": str(node.directory),
                    "log": str(node.log_path),
                }
                for node in self.storage_nodes
            ],
            "instances": [
                {
                    "name": instance.name,
                    "role": instance.role,
                    "address": instance.address,
                    "port": int(instance.address.rsplit(":", 1)[1]),
                    "metrics_url": instance.metrics_url,
                    "pid": instance.pid,
                    "state": instance.state,
                    "directory": str(instance.directory),
                    "log": str(instance.log_path),
                    "endpoint": instance.url(),
                }
                for instance in self.instances
            ],
            "endpoints": self.endpoints(),
            "user": ADMIN_USER,
            "database": DATABASE,
            "password_file": str(self.data_dir / PASSWORD_FILE),
        }
        path = self.data_dir / CLUSTER_FILE
        path.with_suffix(".tmp").write_text(json.dumps(document, indent=2) + "\n")
        path.with_suffix(".tmp").replace(path)

    def endpoints(self) -> dict[str, Any]:
        """PostgreSQL URLs: `writer` (the current writer) and one per instance."""
        endpoints: dict[str, Any] = {}
        for instance in self.instances:
            if instance.role == "writer":
                endpoints["writer"] = instance.url()
        endpoints["instances"] = {instance.name: instance.url() for instance in self.instances}
        return endpoints

    @property
    def password(self) -> str:
        return (self.data_dir / PASSWORD_FILE).read_text().strip()

    def writer(self) -> InstanceProcess:
        for instance in self.instances:
            if instance.role == "writer":
                return instance
        raise NotFound("the cluster has no writer instance")

    @classmethod
    def reopen(cls, data_dir: Path, env: dict[str, str] | None = None) -> LocalCluster:
        """The cluster whose node directories (and their config files) are in `data_dir`."""
        cluster = cls(Path(data_dir), env=env)
        for config_path in sorted(cluster.data_dir.glob("s*/storage_node.toml")):
            config = config_module.load(StorageNodeConfig, config_path, table="storage_node")
            cluster.storage_nodes.append(cluster._process_of(config, config_path))
        cluster.storage_nodes.sort(key=lambda node: int(node.name[1:]))
        for config_path in sorted(cluster.data_dir.glob("*/compute_node.toml")):
            config = config_module.load(ComputeNodeConfig, config_path, table="compute_node")
            cluster.instances.append(cluster._instance_of(config, config_path))
        return cluster

    @classmethod
    def from_cluster_file(cls, data_dir: Path) -> LocalCluster:
        """The cluster as cluster.json last described it, with the processes' pids."""
        document = read_cluster_file(data_dir)
        cluster = cls.reopen(Path(document["data_dir"]))
        cluster.control_plane = document.get("control_plane", {})
        entries = {
            entry["name"]: entry
            for entry in [*document["storage_nodes"], *document.get("instances", [])]
        }
        for node in cluster.processes():
            entry = entries.get(node.name, {})
            node.pid = entry.get("pid")
            node.state = entry.get("state", "stopped")
        return cluster


def read_cluster_file(data_dir: Path) -> dict[str, Any]:
    path = Path(data_dir) / CLUSTER_FILE
    if not path.exists():
        raise NotFound("no cluster.json: is a cluster set up here?", data_dir=str(data_dir))
    document: dict[str, Any] = json.loads(path.read_text())
    return document
