"""The local launcher: a cluster of real processes on one machine.

`borealis up` and the tests start clusters through this same code (as Neon's
tests use `neon_local`). Each process gets its own directory under the cluster's
data directory, a config file written here, a log file, and ports from the
allocator. `cluster.json` in the data directory records what runs where, so
`borealis down` and `status` find the processes again.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

from borealis import config as config_module
from borealis import kms, metrics, rpc, tls
from borealis.encryption import ANY_VOLUME
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
# The secret the router presents to instances in place of a client's password.
PROXY_SECRET_FILE = "proxy_secret"
# The local KMS's master key (mode 0600), unless `up --kms-url` names another KMS.
MASTER_KEY_FILE = "master.key"
ROUTER_NAME = "router"
# The router's gauge of client sessions per backend instance (label `instance`).
ROUTER_SESSIONS_METRIC = "borealis_router_sessions"
# Set to "off" to run clusters without mutual TLS between their processes (to
# measure what it costs); anything else, or unset, leaves it on.
TRANSPORT_SECURITY_ENV = "BOREALIS_TRANSPORT_SECURITY"
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

    def wait_serving(self, timeout_s: float = START_TIMEOUT_S, interval_s: float = 0.1) -> None:
        def serving_or_exited() -> bool:
            # wait_until retries a check that raises, so an exit must end the wait
            # by returning: a process that cannot start is known as soon as it exits,
            # not after the whole timeout (which a caller may wait out under a lock).
            if not self.is_running():
                return True
            return asyncio.run(rpc.health_status(self.address, 1.0)) == "SERVING"

        try:
            wait_until(
                serving_or_exited, timeout_s, interval_s=interval_s, what=f"{self.name} to serve"
            )
        except Unavailable as error:
            raise Unavailable(f"{error}; log tail:\n{self.log_tail()}") from None
        if not self.is_running():
            raise Unavailable(
                f"{self.name} exited during start; see {self.log_path}; log tail:\n"
                f"{self.log_tail()}"
            )

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
    # Failover priority (Aurora's promotion tier): 0 is promoted first.
    tier: int = 1
    # The cluster CA when the endpoint offers TLS (`up --tls`), else empty.
    ca_file: str = ""

    def url(self, user: str = ADMIN_USER, database: str = DATABASE) -> str:
        """The instance's PostgreSQL endpoint, without a password."""
        return postgres_url(self.pg_host, self.pg_port, user, database, self.ca_file)


def postgres_url(host: str, port: int, user: str, database: str, ca_file: str = "") -> str:
    """A libpq URL; with a CA file, one that verifies the server's certificate
    (sslmode=verify-full) by the name its certificate carries (localhost)."""
    if not ca_file:
        return f"postgresql://{user}@{host}:{port}/{database}"
    query = urlencode({"sslmode": "verify-full", "sslrootcert": ca_file}, safe="/")
    return f"postgresql://{user}@{tls.HOST_NAMES[0]}:{port}/{database}?{query}"


def _write_private(path: Path, text: str) -> None:
    """Writes a file only its owner may read (created with mode 0600, never wider)."""
    descriptor = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    path.with_suffix(".tmp").replace(path)


def ensure_credentials(data_dir: Path) -> None:
    """Creates the admin user with a generated password on first start: the
    password in DIR/password, its SCRAM verifier (never the password) in
    DIR/users.json, and the router's proxy secret, all mode 0600."""
    from borealis.pgwire.scram import make_verifier

    if not (data_dir / PROXY_SECRET_FILE).exists():
        _write_private(data_dir / PROXY_SECRET_FILE, secrets.token_urlsafe(32) + "\n")
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
        readers: int = 0,
        router: bool = False,
        router_overrides: dict[str, Any] | None = None,
        client_tls: bool = False,
        transport_security: bool | None = None,
        encryption: bool = True,
        kms_url: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        # Encryption at rest: on unless turned off; the local KMS unless a URL names
        # another. A `kms_url` storage override wins ("" turns encryption off).
        self.encryption_on = encryption
        self.kms_url = kms_url
        # cluster.json's "encryption": {"kms": URL, "data_keys": {VOLUME: wrapped
        # base64}}, set once when the storage nodes are first created; {} when off.
        self.encryption: dict[str, Any] = {}
        # TLS on the PostgreSQL endpoints (`up --tls`), and mutual TLS between the
        # cluster's processes (on unless TRANSPORT_SECURITY_ENV says "off").
        self.client_tls = client_tls
        if transport_security is None:
            transport_security = os.environ.get(TRANSPORT_SECURITY_ENV, "on") != "off"
        self.transport_security = transport_security
        self.ports = ports or PortAllocator()
        self.storage_count = storage_nodes
        self.storage_overrides = storage_overrides or {}
        self.env = env or {}
        self.with_writer = writer
        self.instance_overrides = instance_overrides or {}
        self.storage_nodes: list[StorageNodeProcess] = []
        self.instances: list[InstanceProcess] = []
        self.reader_count = readers
        self.with_router = router
        self.router_overrides = router_overrides or {}
        self.router: NodeProcess | None = None
        self.router_ports: dict[str, int] = {}
        # name -> {"port": P, "instances": [names]}: router ports over chosen instances.
        self.custom_endpoints: dict[str, dict[str, Any]] = {}
        # Written into cluster.json by whoever supervises the cluster.
        self.control_plane: dict[str, Any] = {}
        # The highest storage node number ever given (s1 ...): a new node never takes
        # the name of one that existed, so a log line or a segment's membership
        # naming a node means one node.
        self.storage_number_max = 0
        # Replacements of storage nodes begun and not finished: old name -> new name.
        # Kept in cluster.json so that a retry reuses the new node (the writer's
        # membership change already names it), even across a control plane restart.
        self.storage_replacements: dict[str, str] = {}
        # The automatic scaling settings (control_plane/scaling.py ScalingSettings),
        # kept here so that a restarted control plane keeps them.
        self.scaling: dict[str, Any] = {}
        # Pause and resume (control_plane/pause.py): `paused`, when and why, and the
        # last resume's time. cluster.json has `paused` at the top level too.
        self.pause: dict[str, Any] = {}

    def _ensure_data_keys(self) -> None:
        """Encryption at rest, set up once for a new cluster: the local KMS's master
        key file (mode 0600) unless another KMS is named, then a data key for the
        cluster's volume and a default one for volumes created later through the
        storage API (tests, restores), each written down only wrapped by the KMS."""
        kms_url = self.storage_overrides.get("kms_url", self.kms_url)
        if self.encryption or not self.encryption_on or kms_url == "":
            return
        if "data_keys" in self.storage_overrides:
            wrapped = kms.parse_data_keys(str(self.storage_overrides["data_keys"]))
        else:
            if kms_url is None:
                master_key = self.data_dir / MASTER_KEY_FILE
                if not master_key.exists():
                    kms.create_master_key_file(master_key)
                kms_url = kms.LOCAL_SCHEME + str(master_key)
            volume = self.instance_overrides.get("volume_id", _volume_id_default())
            wrapped = kms.generate_data_keys(kms.kms_from_url(kms_url), [str(volume), ANY_VOLUME])
        self.encryption = {
            "kms": kms_url,
            "data_keys": {
                volume: base64.b64encode(key).decode() for volume, key in wrapped.items()
            },
        }

    def _encryption_settings(self) -> dict[str, str]:
        """The storage node settings that carry the KMS URL and the wrapped data keys."""
        if not self.encryption:
            return {}
        wrapped = {
            volume: base64.b64decode(key) for volume, key in self.encryption["data_keys"].items()
        }
        return {"kms_url": self.encryption["kms"], "data_keys": kms.format_data_keys(wrapped)}

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / tls.TLS_DIR_NAME

    def configure_transport(self) -> None:
        """Creates the cluster's CA and certificates on first use (DATA_DIR/tls) and
        makes this process's gRPC use them. A new cluster created by a process that
        already talks to another cluster gets that cluster's CA, so that the process
        can talk to both (tests run several clusters in one process); `borealis up`
        runs one control plane process per cluster, so each has its own CA."""
        if not (self.transport_security or self.client_tls):
            rpc.configure_transport(None)
            return
        current = rpc.transport()
        ca_from = None
        # Only a CA whose key is here can be shared (it signs the new node certificate).
        if (
            current is not None
            and not (self.tls_dir / tls.CA_CERT_FILE).exists()
            and (current.tls_dir / tls.CA_KEY_FILE).exists()
        ):
            ca_from = current.tls_dir
        security = tls.ensure_cluster_tls(self.tls_dir, ca_from)
        if self.client_tls:
            tls.ensure_endpoint_certificate(self.tls_dir)
        rpc.configure_transport(security if self.transport_security else None)

    def process_env(self) -> dict[str, str]:
        """The environment of every process of the cluster (also one a test starts
        itself): the test's or user's, and where the cluster's TLS files are
        (rpc.transport reads it)."""
        if not self.transport_security:
            return dict(self.env)
        return {**self.env, tls.TLS_DIR_ENV: str(self.tls_dir)}

    def _ca_file(self) -> str:
        """The CA a client verifies the PostgreSQL endpoints with ('' without --tls)."""
        return str(self.tls_dir / tls.CA_CERT_FILE) if self.client_tls else ""

    def _endpoint_tls(self) -> dict[str, Path]:
        """The PostgreSQL server certificate settings of a router or instance config."""
        if not self.client_tls:
            return {}
        return {
            "pg_tls_cert_file": self.tls_dir / tls.ENDPOINT_CERT_FILE,
            "pg_tls_key_file": self.tls_dir / tls.ENDPOINT_KEY_FILE,
        }

    def _storage_node(self, name: str, az: str) -> StorageNodeProcess:
        values = {"name": name, "az": az, **self._encryption_settings(), **self.storage_overrides}
        config, path = self._write_config(StorageNodeConfig, "storage_node", values)
        return self._process_of(config, path)

    def _instance(self, name: str, role: str, tier: int = 1) -> InstanceProcess:
        values: dict[str, Any] = {
            "name": name,
            "role": role,
            "cluster_file": self.data_dir / CLUSTER_FILE,
            "users_file": self.data_dir / USERS_FILE,
            "proxy_secret_file": self.data_dir / PROXY_SECRET_FILE,
            "database": DATABASE,
            "pg_port": self.ports.allocate(),
            **self._endpoint_tls(),
            **self.instance_overrides,
        }
        if role == "reader":
            # Not from cluster.json: a reader serves only once it follows the writer,
            # and the first cluster.json is written once every instance serves.
            values["writer_address"] = self.writer().address
        config, path = self._write_config(ComputeNodeConfig, "compute_node", values)
        instance = self._instance_of(config, path)
        instance.tier = tier
        return instance

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
            "env": self.process_env(),
            "metrics_url": metrics_url,
        }

    def _instance_of(self, config: ComputeNodeConfig, config_path: Path) -> InstanceProcess:
        return InstanceProcess(
            **self._launch_fields(config, "compute_node", config_path),
            role=config.role,
            pg_host=config.host,
            pg_port=config.pg_port,
            ca_file=str(self.tls_dir / tls.CA_CERT_FILE) if config.pg_tls_cert_file else "",
        )

    def _process_of(self, config: StorageNodeConfig, config_path: Path) -> StorageNodeProcess:
        return StorageNodeProcess(
            **self._launch_fields(config, "storage_node", config_path), az=config.az
        )

    def start(self) -> LocalCluster:
        """Starts every process that is not running (all of them the first time):
        the storage nodes, then (once cluster.json names them) the instances."""
        self.configure()
        routers = [self.router] if self.router is not None else []
        try:
            for group in (self.storage_nodes, self.instances, routers):
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

    def configure(self) -> LocalCluster:
        """Writes the config of every process not configured yet (directories, ports),
        starting none: what `start` does first. A restore fills the storage nodes'
        segments between the two (control_plane/restore.py)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ensure_credentials(self.data_dir)
        self.configure_transport()
        if not self.storage_nodes:
            self._ensure_data_keys()
            self.storage_nodes = [
                self._storage_node(name, az) for name, az in storage_layout(self.storage_count)
            ]
            self.storage_number_max = max(self.storage_number_max, self.storage_count)
        if self.with_writer and not self.instances:
            self.instances = [self._instance("w1", "writer")]
            self.instances += [
                self._instance(f"r{index + 1}", "reader") for index in range(self.reader_count)
            ]
        if self.with_router and self.router is None:
            self.router = self._router_process()
        return self

    def processes(self) -> list[NodeProcess]:
        routers = [self.router] if self.router is not None else []
        return [*self.storage_nodes, *self.instances, *routers]

    def add_reader(self, tier: int = 1, wait: bool = True) -> InstanceProcess:
        """A new reader instance named after the highest so far: started and serving,
        or with `wait` False, started and "starting" (the caller waits for it)."""
        numbers = [
            int(i.name[1:]) for i in self.instances if i.name[:1] == "r" and i.name[1:].isdigit()
        ]
        reader = self._instance(f"r{max(numbers, default=0) + 1}", "reader", tier)
        self.instances.append(reader)
        reader.state = "starting"
        reader.start(wait=wait)
        if wait:
            reader.state = "running"
        self.write_cluster_file()
        return reader

    def new_storage_node(self, az: str) -> StorageNodeProcess:
        """A storage node under a name never used before (s7, s8, ...), its config
        written (the settings of the existing nodes, its own ports), not started and
        not yet part of the cluster: `register_storage_node` adds it once it serves."""
        number = max([self.storage_number_max, *self._storage_numbers()]) + 1
        # A directory left by a node this cluster no longer records keeps its name too.
        while (self.data_dir / f"s{number}").exists():
            number += 1
        self.storage_number_max = number
        name = f"s{number}"
        template = self._storage_template()
        if template is None:
            return self._storage_node(name, az)
        ports = {"port": self._port_unused(), "metrics_port": self._port_unused()}
        config = dataclasses.replace(
            template, name=name, az=az, data_dir=self.data_dir / name, **ports
        )
        config.data_dir.mkdir(parents=True, exist_ok=True)
        path = config.data_dir / "storage_node.toml"
        path.write_text("[storage_node]\n" + config_module.to_toml(config))
        return self._process_of(config, path)

    def register_storage_node(self, node: StorageNodeProcess) -> None:
        """Makes a new node (from `new_storage_node`) part of the cluster: cluster.json
        lists it, so every process that starts from now on knows it."""
        assert all(each.name != node.name for each in self.storage_nodes), node.name
        self.storage_nodes.append(node)
        self.write_cluster_file()

    def add_storage_node(self, az: str) -> StorageNodeProcess:
        """A new storage node in `az`, started and serving, listed in cluster.json.
        It holds no segment until a membership change (replace-storage-node) gives it one."""
        node = self.new_storage_node(az)
        node.state = "starting"
        try:
            node.start()
        except BaseException:
            self.discard_storage_node(node)
            raise
        node.state = "running"
        self.register_storage_node(node)
        return node

    def discard_storage_node(self, node: StorageNodeProcess) -> None:
        """Kills a new node that did not become part of the cluster and deletes its
        directory (its name stays used)."""
        node.stop(immediate=True)
        node.state = "stopped"
        shutil.rmtree(node.directory, ignore_errors=True)

    def remove_storage_node(self, name: str, immediate: bool = True) -> None:
        """Stops a storage node if it runs, forgets it and deletes its directory (its
        segments), and rewrites cluster.json without it. Only for a node that is in
        no PG's membership any more (after a replacement): nothing on it is needed,
        so by default it is killed rather than shut down."""
        node = self.node(name)
        node.stop(immediate)
        node.state = "stopped"
        self.storage_nodes.remove(node)
        self.storage_replacements.pop(name, None)
        shutil.rmtree(node.directory, ignore_errors=True)
        self.write_cluster_file()

    def _storage_numbers(self) -> list[int]:
        return [int(node.name[1:]) for node in self.storage_nodes if node.name[1:].isdigit()]

    def _storage_template(self) -> StorageNodeConfig | None:
        """The config of an existing storage node (whose settings a new one copies:
        the overrides of a reopened cluster live only in its nodes' files)."""
        for node in self.storage_nodes:
            path = node.directory / "storage_node.toml"
            if path.exists():
                return config_module.load(StorageNodeConfig, path, table="storage_node")
        return None

    def _port_unused(self) -> int:
        """A free port that no process of the cluster is configured with (a stopped
        node's port is free now, and taken again when it starts)."""
        taken = self._ports_configured()
        for _ in range(len(taken) + 1):
            port = self.ports.allocate()
            if port not in taken:
                return port
        raise AssertionError("the allocator hands out each port once")

    def _ports_configured(self) -> set[int]:
        urls = [getattr(process, "metrics_url", "") for process in self.processes()]
        return {
            *(int(process.address.rsplit(":", 1)[1]) for process in self.processes()),
            *(port for url in urls if url and (port := urlsplit(url).port)),
            *(instance.pg_port for instance in self.instances),
            *self.router_ports.values(),
            *(endpoint["port"] for endpoint in self.custom_endpoints.values()),
        }

    def remove_instance(self, name: str) -> None:
        """Stops an instance and forgets it (its directory is removed: a reader keeps
        nothing durable). Custom endpoints stop naming it."""
        instance = self.instance(name)
        instance.stop()
        self.instances.remove(instance)
        for endpoint in self.custom_endpoints.values():
            endpoint["instances"] = [each for each in endpoint["instances"] if each != name]
        shutil.rmtree(instance.directory, ignore_errors=True)
        self.write_cluster_file()

    def set_role(self, name: str, role: str, writer_address: str = "") -> InstanceProcess:
        """Changes an instance's role in its config file, so that every later start
        has it (failover: a reader promoted to writer, which the control plane also
        switches in place; the old writer rejoining as a reader). cluster.json shows
        the new role at its next write."""
        instance = self.instance(name)
        path = instance.directory / "compute_node.toml"
        config = config_module.load(ComputeNodeConfig, path, table="compute_node")
        config = dataclasses.replace(config, role=role, writer_address=writer_address)
        path.with_suffix(".tmp").write_text("[compute_node]\n" + config_module.to_toml(config))
        path.with_suffix(".tmp").replace(path)
        instance.role = role
        return instance

    def instance(self, name: str) -> InstanceProcess:
        for instance in self.instances:
            if instance.name == name:
                return instance
        raise NotFound("no such instance in the cluster", instance=name)

    def router_sessions(self, instance: str) -> int:
        """Client sessions the router has on `instance` now (0 without a router)."""
        router = self.router
        if router is None or not router.is_running():
            return 0
        samples = metrics.parse(asyncio.run(rpc.metrics_text(router.address, 2.0)))
        return int(samples.get(f'{ROUTER_SESSIONS_METRIC}{{instance="{instance}"}}', 0))

    def create_endpoint(self, name: str, instances: list[str]) -> str:
        """A custom endpoint on a new router port (the router picks it up from
        cluster.json); redefining an existing name keeps its port."""
        for each in instances:
            self.instance(each)
        existing = self.custom_endpoints.get(name)
        port = existing["port"] if existing else self.ports.allocate()
        self.custom_endpoints[name] = {"port": port, "instances": list(instances)}
        self.write_cluster_file()
        return self._url(port)

    def _url(self, port: int) -> str:
        return postgres_url("127.0.0.1", port, ADMIN_USER, DATABASE, self._ca_file())

    def _router_process(self) -> NodeProcess:
        from router.config import RouterConfig

        directory = self.data_dir / ROUTER_NAME
        values = {
            "name": ROUTER_NAME,
            "data_dir": directory,
            "port": self.ports.allocate(),
            "metrics_port": self.ports.allocate(),
            "writer_port": self.ports.allocate(),
            "reader_port": self.ports.allocate(),
            "cluster_file": self.data_dir / CLUSTER_FILE,
            "users_file": self.data_dir / USERS_FILE,
            "proxy_secret_file": self.data_dir / PROXY_SECRET_FILE,
            **self._endpoint_tls(),
            **self.router_overrides,
        }
        config = config_module.build(RouterConfig, values)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "router.toml"
        path.write_text("[router]\n" + config_module.to_toml(config))
        return self._router_of(config, path)

    def _router_of(self, config: Any, config_path: Path) -> NodeProcess:
        self.router_ports = {"writer": config.writer_port, "reader": config.reader_port}
        fields = self._launch_fields(config, "router", config_path)
        fields.pop("metrics_url")
        return NodeProcess(**fields)

    def stop(self, immediate: bool = False) -> None:
        """Stops the router and the instances first (a writer finishes shipping),
        then storage."""
        if self.router is not None:
            self.router.stop(immediate)
            self.router.state = "stopped"
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
                    "tier": instance.tier,
                }
                for instance in self.instances
            ],
            "storage_node_number_max": self.storage_number_max,
            "storage_replacements": self.storage_replacements,
            "scaling": self.scaling,
            "paused": bool(self.pause.get("paused")),
            "pause": self.pause,
            "router": self._router_entry(),
            "custom_endpoints": self.custom_endpoints,
            "endpoints": self.endpoints(),
            "user": ADMIN_USER,
            "database": DATABASE,
            "password_file": str(self.data_dir / PASSWORD_FILE),
            "encryption": self.encryption or None,
            "tls": self._tls_entry(),
            "backup": self._backup_entry(),
        }
        path = self.data_dir / CLUSTER_FILE
        path.with_suffix(".tmp").write_text(json.dumps(document, indent=2) + "\n")
        path.with_suffix(".tmp").replace(path)

    def endpoints(self) -> dict[str, Any]:
        """PostgreSQL URLs: `writer` and `reader` (through the router when there is
        one; else the writer instance itself), each custom endpoint, and each
        instance's own."""
        endpoints: dict[str, Any] = {}
        for instance in self.instances:
            if instance.role == "writer":
                endpoints["writer"] = endpoints["reader"] = instance.url()
        if self.router is not None:
            endpoints["writer"] = self._url(self.router_ports["writer"])
            endpoints["reader"] = self._url(self.router_ports["reader"])
        endpoints["custom"] = {
            name: self._url(endpoint["port"]) for name, endpoint in self.custom_endpoints.items()
        }
        endpoints["instances"] = {instance.name: instance.url() for instance in self.instances}
        return endpoints

    def _backup_entry(self) -> dict[str, Any] | None:
        """Where the continuous backup goes (storage_node/backup.py), as the storage
        nodes' config says; None when backup is off."""
        template = self._storage_template()
        if template is None or not template.backup_store_url:
            return None
        volume_id = self.instance_overrides.get("volume_id", _volume_id_default())
        return {
            "store_url": template.backup_store_url,
            "endpoint_url": template.backup_endpoint_url,
            "cluster_id": template.backup_cluster_id,
            "volume_id": int(volume_id),
            "volume_name": f"{template.backup_cluster_id}-{volume_id}",
            "retention_days": template.backup_retention_days,
        }

    def _tls_entry(self) -> dict[str, Any]:
        """Where the TLS files are: `dir` (node credentials, read by the CLI when
        `transport_security` is on) and `ca_file` (what psql's sslrootcert names
        when `client_endpoints` offer TLS)."""
        return {
            "dir": str(self.tls_dir),
            "ca_file": str(self.tls_dir / tls.CA_CERT_FILE),
            "transport_security": self.transport_security,
            "client_endpoints": self.client_tls,
        }

    def _router_entry(self) -> dict[str, Any] | None:
        router = self.router
        if router is None:
            return None
        return {
            "name": router.name,
            "address": router.address,
            "pid": router.pid,
            "state": router.state,
            "directory": str(router.directory),
            "log": str(router.log_path),
            **{f"{name}_port": port for name, port in self.router_ports.items()},
        }

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
        cluster.storage_number_max = max(cluster._storage_numbers(), default=0)
        for config_path in sorted(cluster.data_dir.glob("*/compute_node.toml")):
            config = config_module.load(ComputeNodeConfig, config_path, table="compute_node")
            cluster.instances.append(cluster._instance_of(config, config_path))
        router_config = cluster.data_dir / ROUTER_NAME / "router.toml"
        if router_config.exists():
            from router.config import RouterConfig

            config = config_module.load(RouterConfig, router_config, table="router")
            cluster.router = cluster._router_of(config, router_config)
            cluster.with_router = True
            cluster.client_tls = config.pg_tls_cert_file is not None
        # What only cluster.json records: tiers, custom endpoints, storage node names
        # given (some of those nodes may be gone) and replacements in progress.
        try:
            document = read_cluster_file(cluster.data_dir)
        except NotFound:
            return cluster
        tiers = {entry["name"]: entry.get("tier", 1) for entry in document.get("instances", [])}
        for instance in cluster.instances:
            instance.tier = tiers.get(instance.name, instance.tier)
        cluster.custom_endpoints = document.get("custom_endpoints") or {}
        cluster.storage_number_max = max(
            cluster.storage_number_max, int(document.get("storage_node_number_max", 0))
        )
        names = {node.name for node in cluster.storage_nodes}
        cluster.storage_replacements = {
            old: new
            for old, new in (document.get("storage_replacements") or {}).items()
            if old in names
        }
        cluster.scaling = document.get("scaling") or {}
        # A reopened cluster starts every instance (`start`), so it is not paused;
        # the figures of the last pause and resume stay.
        cluster.pause = {**(document.get("pause") or {}), "paused": False}
        cluster.encryption = document.get("encryption") or {}
        return cluster

    @classmethod
    def from_cluster_file(cls, data_dir: Path) -> LocalCluster:
        """The cluster as cluster.json last described it, with the processes' pids."""
        document = read_cluster_file(data_dir)
        cluster = cls.reopen(Path(document["data_dir"]))
        cluster.control_plane = document.get("control_plane", {})
        router = [document["router"]] if document.get("router") else []
        entries = {
            entry["name"]: entry
            for entry in [*document["storage_nodes"], *document.get("instances", []), *router]
        }
        for node in cluster.processes():
            entry = entries.get(node.name, {})
            node.pid = entry.get("pid")
            node.state = entry.get("state", "stopped")
        return cluster


def configure_transport_from(document: dict[str, Any]) -> None:
    """Makes this process's gRPC use the cluster's credentials that cluster.json
    names (a CLI command, a benchmark talking to a cluster `up` started)."""
    entry = document.get("tls") or {}
    secured = entry.get("transport_security") and entry.get("dir")
    rpc.configure_transport(tls.load(Path(entry["dir"])) if secured else None)


def _volume_id_default() -> int:
    """The volume id an instance config has when none is set."""
    fields = {field.name: field.default for field in dataclasses.fields(ComputeNodeConfig)}
    return int(fields["volume_id"])  # type: ignore[call-overload]


def read_cluster_file(data_dir: Path) -> dict[str, Any]:
    path = Path(data_dir) / CLUSTER_FILE
    if not path.exists():
        raise NotFound("no cluster.json: is a cluster set up here?", data_dir=str(data_dir))
    document: dict[str, Any] = json.loads(path.read_text())
    return document
