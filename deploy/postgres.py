"""A throwaway PostgreSQL 15 server, for the client-compatibility tests and the benchmark.

`LocalPostgres(directory, ...)` runs initdb into `directory/data` (SCRAM-SHA-256 for
every connection, the given user and password), then `start()` runs the postmaster on
127.0.0.1 and a port from the allocator, with fsync on, and waits until a real login
and `SELECT 1` succeed. `stop()` is a fast shutdown (SIGINT), SIGKILL after a deadline;
it also runs at interpreter exit so no server outlives the process that started it.

initdb and postgres refuse to run as root. Under root (as in CI) both run as the
`postgres` user through setpriv, the directory is chowned to that user, and the
processes keep only CAP_DAC_READ_SEARCH so they can reach a directory below a
root-only parent (pytest's /tmp/pytest-of-root is mode 0700) without changing the
parent's permissions.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

from borealis.errors import NotFound, Unavailable
from borealis.wait import wait_until
from deploy.ports import PortAllocator

BINARY_DIRECTORIES = (Path("/usr/lib/postgresql/15/bin"),)
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
SERVICE_USER = "postgres"
# A unix socket path must fit sockaddr_un.sun_path (108 bytes with the NUL); the
# socket file is named ".s.PGSQL.<port>", so leave room for it.
SOCKET_DIRECTORY_LENGTH_MAX = 90


def find_binary(name: str) -> Path:
    """The PostgreSQL 15 `name` binary: the Debian layout first, then PATH."""
    for directory in BINARY_DIRECTORIES:
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found is None:
        raise NotFound(
            f"PostgreSQL binary {name!r} not found: install PostgreSQL 15 "
            "(apt-get install postgresql-15) or put its bin directory on PATH",
            searched=[str(directory) for directory in BINARY_DIRECTORIES],
        )
    return Path(found)


class LocalPostgres:
    """A PostgreSQL server in `directory`, owned by this process and stopped by it."""

    def __init__(
        self,
        directory: Path,
        user: str = "postgres",
        password: str = "postgres",
        dbname: str = "postgres",
        ports: PortAllocator | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.user = user
        self.password = password
        self.dbname = dbname
        self.host = "127.0.0.1"
        self.port = (ports or PortAllocator()).allocate()
        self.settings = dict(settings or {})
        self.process: subprocess.Popen[bytes] | None = None
        self._atexit_registered = False

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "postgres.log"

    @property
    def url(self) -> str:
        """postgresql://user:password@127.0.0.1:port/dbname, for SQLAlchemy and psql."""
        credentials = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"
        return f"postgresql://{credentials}@{self.host}:{self.port}/{quote(self.dbname)}"

    @property
    def dsn(self) -> str:
        """A libpq keyword/value connection string (psycopg.connect(dsn))."""
        return (
            f"host={self.host} port={self.port} user={self.user} "
            f"password={_quote_value(self.password)} dbname={self.dbname} sslmode=disable"
        )

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def init(self) -> None:
        """initdb into data_dir (once): SCRAM for local and host connections, fsync on."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._give_to_service_user(self.directory)
        password_file = self.directory / "initdb.pwfile"
        password_file.write_text(self.password + "\n")
        password_file.chmod(0o600)
        self._give_to_service_user(password_file)
        argv = [
            str(find_binary("initdb")),
            f"--pgdata={self.data_dir}",
            f"--username={self.user}",
            f"--pwfile={password_file}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
            # initdb's own fsync of the fresh cluster only matters if the machine
            # crashes in the next seconds; the server itself runs with fsync on.
            "--no-sync",
        ]
        try:
            result = subprocess.run(
                self._as_service_user(argv),
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT_S,
                cwd=self.directory,
            )
        finally:
            password_file.unlink(missing_ok=True)
        if result.returncode != 0:
            raise Unavailable(
                "initdb failed", directory=str(self.data_dir), output=result.stdout + result.stderr
            )

    def start(self) -> LocalPostgres:
        """Starts the server (initdb first if needed) and waits until it serves queries."""
        assert not self.is_running(), "this PostgreSQL is already running"
        self.init()
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.process = subprocess.Popen(
                self._as_service_user(self._postgres_argv()),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.directory,
                # Its own session: a Ctrl-C meant for the test runner does not reach
                # it, and stop() decides how it ends.
                start_new_session=True,
            )
        finally:
            log_file.close()
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        try:
            self.wait_ready()
            self._create_database()
        except BaseException:
            self.stop(immediate=True)
            raise
        return self

    def _postgres_argv(self) -> list[str]:
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": self._socket_directory(),
            "fsync": "on",
            "synchronous_commit": "on",
            "logging_collector": "off",
            **self.settings,
        }
        argv = [str(find_binary("postgres")), "-D", str(self.data_dir)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        return argv

    def _socket_directory(self) -> str:
        """The data directory when the socket path fits, else no unix socket at all."""
        return str(self.data_dir) if len(str(self.data_dir)) <= SOCKET_DIRECTORY_LENGTH_MAX else ""

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        def ready() -> bool:
            if not self.is_running():
                raise Unavailable(f"postgres exited during start; see {self.log_path}")
            return self.execute("SELECT 1", dbname="postgres") == [(1,)]

        try:
            wait_until(ready, timeout_s, interval_s=0.1, what="PostgreSQL to accept connections")
        except Unavailable as error:
            raise Unavailable(f"{error}; log tail:\n{self.log_tail()}") from None

    def execute(self, sql: str, dbname: str | None = None) -> list[tuple[object, ...]]:
        """Runs one statement in autocommit and returns its rows (empty if none)."""
        import psycopg  # Imported here so the launcher loads without the driver.

        with psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=dbname or self.dbname,
            sslmode="disable",
            connect_timeout=5,
            autocommit=True,
        ) as connection:
            cursor = connection.execute(sql)
            return list(cursor.fetchall()) if cursor.description else []

    def _create_database(self) -> None:
        if self.dbname == "postgres":
            return
        found = self.execute(
            f"SELECT 1 FROM pg_database WHERE datname = '{self.dbname}'", dbname="postgres"
        )
        if not found:
            self.execute(f'CREATE DATABASE "{self.dbname}"', dbname="postgres")

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, immediate: bool = False) -> None:
        """Fast shutdown (SIGINT: roll back sessions, checkpoint, exit); `immediate`
        is SIGQUIT (no checkpoint, crash recovery at the next start). SIGKILL after
        STOP_TIMEOUT_S either way."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT if immediate else signal.SIGINT)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                # The postmaster's children die with it once it is gone (they
                # watch its pipe), so killing the session is enough.
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.process = None

    def restart(self, immediate: bool = False) -> None:
        self.stop(immediate)
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _as_service_user(self, argv: list[str]) -> list[str]:
        """argv unchanged, or under root wrapped to run as the postgres user."""
        if os.geteuid() != 0:
            return argv
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise NotFound("running as root needs setpriv (util-linux) to drop to postgres")
        return [
            setpriv,
            f"--reuid={SERVICE_USER}",
            f"--regid={SERVICE_USER}",
            "--init-groups",
            "--inh-caps=+dac_read_search",
            "--ambient-caps=+dac_read_search",
            *argv,
        ]

    def _give_to_service_user(self, path: Path) -> None:
        if os.geteuid() != 0:
            return
        try:
            entry = pwd.getpwnam(SERVICE_USER)
        except KeyError:
            raise NotFound(
                f"running as root needs a {SERVICE_USER!r} user to run PostgreSQL as"
            ) from None
        os.chown(path, entry.pw_uid, entry.pw_gid)
        path.chmod(0o700 if path.is_dir() else 0o600)


def _quote_value(value: str) -> str:
    """A libpq connection-string value, quoted when it holds spaces or quotes."""
    if value and not any(character in value for character in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def main() -> None:
    """Runs a throwaway server in a temporary directory until Ctrl-C (for manual checks)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="borealis-pg-") as directory:
        server = LocalPostgres(Path(directory)).start()
        print(server.url, flush=True)
        try:
            while server.is_running():
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()


if __name__ == "__main__":
    main()
