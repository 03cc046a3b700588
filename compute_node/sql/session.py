"""A PostgreSQL client session on the engine: the pgwire Backend of an instance.

The protocol server (borealis/pgwire/server.py) hands each statement here; this
module translates it (compute_node/sql/translate.py), keeps what PostgreSQL keeps
per session and SQLite cannot (settings for SET/SHOW, the transaction's start time
for now()), runs the SQLite statement on the engine session, and gives the result
PostgreSQL's shape: column types, command tags, SQLSTATEs.

Column types. A column's PostgreSQL type comes from the translation (casts,
declared types of referenced columns, functions); where the translation cannot
tell, from the values (an int is int8, a float float8, bytes bytea) when the
statement runs, or text when it is only described. A statement described before
it runs (asyncpg, psycopg's prepare) is encoded with the described types.
"""

from __future__ import annotations

import datetime
import functools
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from borealis.errors import BorealisError, SqlError
from borealis.pgwire import types as pg_types
from borealis.pgwire.backend import (
    FAILED_TRANSACTION,
    IDLE,
    IN_TRANSACTION,
    Column,
    CopySpec,
    Description,
    Outcome,
    Startup,
)
from compute_node.engine.functions import SessionValues
from compute_node.engine.sessions import Result, Session, StatementError
from compute_node.sql import catalog, client_queries, utility
from compute_node.sql import translate as tr
from compute_node.sql.errors import sql_error_of
from compute_node.sql.types import pg_type_of_declared

TEXT_OID = pg_types.oid_of("text")
# pg_backend_pid() of each session: a number per session of the process.
_backend_pids = itertools.count(1000)
# Rows of COPY FROM STDIN go to SQLite in executemany batches of the server's size.
TAGS_WITH_COUNT = frozenset({"SELECT", "UPDATE", "DELETE", "MERGE", "FETCH", "MOVE", "COPY"})
# Statements a read-only instance runs on SQLite (session statements such as SET,
# SHOW and transaction control never reach this check); anything else gets 25006.
_READ_COMMANDS = frozenset({"SELECT", "EXPLAIN", "VALUES", "TABLE"})
_TYPE_OF_VALUE = {int: "int8", float: "float8", str: "text", bytes: "bytea"}

# Settings PostgreSQL reports in ParameterStatus when they change.
REPORTED = frozenset(
    {
        "application_name",
        "client_encoding",
        "datestyle",
        "intervalstyle",
        "timezone",
        "standard_conforming_strings",
        "is_superuser",
        "session_authorization",
        "server_version",
        "integer_datetimes",
        "default_transaction_read_only",
        "in_hot_standby",
    }
)


def default_settings(user: str, server_version: str, read_only: bool) -> dict[str, str]:
    """A session's settings before any SET, by lower-case name (as SHOW answers):
    the catalog's defaults (pg_settings shows the same) and this session's own."""
    settings = {name.lower(): value for name, value in catalog.DEFAULT_SETTINGS.items()}
    flag = "on" if read_only else "off"
    settings.update(
        {
            "server_version": server_version,
            "session_authorization": user,
            # Write transactions are serialised and a reader that writes after a
            # newer commit gets 40001: SERIALIZABLE, whatever the client asks for.
            "transaction_isolation": "serializable",
            "default_transaction_isolation": "serializable",
            "transaction_read_only": flag,
            "default_transaction_read_only": flag,
            "in_hot_standby": flag,
        }
    )
    return settings


class SchemaCache:
    """Column names and PostgreSQL types of the database's tables, for the
    translator's type inference. Shared by the instance's sessions; reloaded
    (through the session that changed it) after DDL."""

    QUERY = (
        "SELECT m.name, p.name, p.type FROM sqlite_schema AS m, pragma_table_info(m.name) AS p"
        " WHERE m.type IN ('table', 'view') AND m.name NOT LIKE 'sqlite%' ORDER BY m.name, p.cid"
    )

    def __init__(self) -> None:
        self._tables: dict[str, tuple[tuple[str, str], ...]] = {}
        self.version = 0
        self.loaded = False

    def columns_of(self, table: str) -> tuple[tuple[str, str], ...] | None:
        return self._tables.get(table.lower())

    async def reload(self, session: Session) -> None:
        result = await session.execute(self.QUERY)
        tables: dict[str, list[tuple[str, str]]] = {}
        for table, column, declared in result.rows:
            tables.setdefault(table.lower(), []).append((column, pg_type_of_declared(declared)))
        self._tables = {name: tuple(columns) for name, columns in tables.items()}
        self.version += 1
        self.loaded = True


class InstanceSql:
    """What an instance's SQL sessions share: the schema and the statement cache."""

    def __init__(
        self,
        server_version: str,
        *,
        read_only: bool = False,
        database: str = "borealis",
        statement_cache_entries: int = 4096,
    ) -> None:
        self.schema = SchemaCache()
        self.translator = tr.Translator(self.schema, statement_cache_entries)
        self.server_version = server_version
        self.read_only = read_only
        self.database = database


@dataclass
class _Copy:
    """A running COPY FROM STDIN."""

    insert: str
    oids: tuple[int, ...]
    began: bool
    rows: int = 0


@dataclass
class _Transaction:
    started: datetime.datetime | None = None
    local_settings: dict[str, str] = field(default_factory=dict)
    ran_ddl: bool = False


class SqlSession:
    """One client's session: borealis/pgwire/backend.Backend over an engine Session."""

    def __init__(self, shared: InstanceSql, session: Session, startup: Startup) -> None:
        self._shared = shared
        self._session = session
        self._startup = startup
        self.settings = default_settings(startup.user, shared.server_version, shared.read_only)
        application_name = startup.parameters.get("application_name")
        if application_name is not None:
            self.settings["application_name"] = application_name
        self._transaction = _Transaction()
        self._copy: _Copy | None = None
        session.values = SessionValues(
            startup.user, shared.database, next(_backend_pids), self.settings
        )

    # -- Backend ------------------------------------------------------------------------

    @property
    def transaction_status(self) -> bytes:
        if self._session.transaction_failed:
            return FAILED_TRANSACTION
        return IN_TRANSACTION if self._session.in_transaction else IDLE

    def split(self, sql: str) -> list[str]:
        return tr.split(sql)

    async def describe(self, sql: str, parameter_oids: Sequence[int]) -> Description:
        translated = await self._translate(sql)
        oids = self._parameter_oids(translated, parameter_oids)
        if not translated.returns_rows:
            return Description(oids, None)
        types = translated.column_types or ()
        columns = tuple(
            Column(name, pg_types.oid_of(types[index]) if index < len(types) else TEXT_OID)
            for index, name in enumerate(translated.column_names)
        )
        return Description(oids, columns)

    async def execute(
        self, sql: str, parameters: Sequence[Any], parameter_oids: Sequence[int]
    ) -> Outcome:
        try:
            return await self._execute(sql, parameters)
        except StatementError as error:
            self._session.fail_transaction()
            raise sql_error_of(error, sql) from error
        except BorealisError:
            self._session.fail_transaction()
            raise

    async def _execute(self, sql: str, parameters: Sequence[Any]) -> Outcome:
        translated = await self._translate(sql)
        action = translated.action
        if action is not None:
            return await self._action(translated, action, parameters)
        if translated.sqlite is None:
            return Outcome(translated.command)  # accepted and nothing to do (VACUUM)
        if self._shared.read_only and translated.command not in _READ_COMMANDS:
            raise SqlError(
                f"cannot execute {translated.command} in a read-only transaction", "25006"
            )
        result = await self._run(translated, parameters)
        if translated.command.startswith(("CREATE", "ALTER", "DROP")):
            await self._schema_changed()
        return self._outcome(translated, result)

    async def copy_rows(self, rows: list[list[str | None]]) -> None:
        copy = self._copy
        assert copy is not None, "copy_rows outside a COPY"
        for row in rows:
            if len(row) != len(copy.oids):
                raise SqlError(f"row has {len(row)} columns, expected {len(copy.oids)}", "22P04")
        values = [
            [
                pg_types.decode_parameter(oid, 0, None if value is None else value.encode())
                for oid, value in zip(copy.oids, row, strict=True)
            ]
            for row in rows
        ]
        try:
            await self._session.executemany(copy.insert, values)
        except StatementError as error:
            raise sql_error_of(error) from error
        copy.rows += len(values)

    async def copy_done(self) -> Outcome:
        copy, self._copy = self._copy, None
        assert copy is not None, "copy_done outside a COPY"
        if copy.began:
            try:
                await self._statement("COMMIT")
            except StatementError as error:
                raise sql_error_of(error) from error
        return Outcome(f"COPY {copy.rows}")

    async def copy_fail(self, message: str) -> None:
        copy, self._copy = self._copy, None
        if copy is not None and copy.began and self._session.in_transaction:
            await self._statement("ROLLBACK")

    def cancel(self) -> None:
        self._session.cancel()

    async def close(self) -> None:
        await self._session.close()

    # -- translation --------------------------------------------------------------------

    async def _translate(self, sql: str) -> tr.Translated:
        if sql.endswith((";", " ", "\n")):
            # A Parse message may end its one statement with ';' (pgbench's "BEGIN;").
            sql = sql.rstrip().rstrip(";").rstrip()
        shared = self._shared
        if not shared.schema.loaded:
            await shared.schema.reload(self._session)
            shared.translator.invalidate()
        # Catalog queries of psql, pgbench and SQLAlchemy that translation cannot
        # express map to hand-written SQLite (compute_node/sql/client_queries.py).
        if "pg_" in sql:
            known = client_queries.lookup(sql)
            if known is not None:
                return tr.Translated(
                    known.sqlite_sql,
                    "SELECT",
                    returns_rows=True,
                    parameter_types=("unknown",) * known.parameter_count,
                    column_names=tuple(name for name, _ in known.columns),
                    column_types=tuple(type_name for _, type_name in known.columns),
                    literals=known.literals,
                )
        return shared.translator.translate(sql)

    def _parameter_oids(self, translated: tr.Translated, given: Sequence[int]) -> tuple[int, ...]:
        inferred = translated.parameter_types
        count = max(len(inferred), len(given))
        oids = []
        for index in range(count):
            oid = given[index] if index < len(given) else 0
            if oid == 0 and index < len(inferred) and inferred[index] != "unknown":
                oid = pg_types.oid_of(inferred[index])
            oids.append(oid or TEXT_OID)
        return tuple(oids)

    # -- running ------------------------------------------------------------------------

    async def _run(self, translated: tr.Translated, parameters: Sequence[Any]) -> Result:
        sqlite = translated.sqlite
        assert sqlite is not None
        now = self._now() if translated.uses_now else ""
        return await self._statement(sqlite, translated.bindings(parameters, now))

    async def _statement(self, sql: str, values: Any = ()) -> Result:
        return await self._session.execute(sql, values)

    def _now(self) -> str:
        """now(): the transaction's start time (the statement's outside one), as
        timestamptz text in UTC."""
        moment = datetime.datetime.now(datetime.UTC)
        if self._session.in_transaction:
            if self._transaction.started is None:
                self._transaction.started = moment
            moment = self._transaction.started
        return moment.strftime("%Y-%m-%d %H:%M:%S.%f+00:00")

    def _outcome(self, translated: tr.Translated, result: Result) -> Outcome:
        command = translated.command
        if command == "INSERT":
            tag = f"INSERT 0 {result.rowcount}"
        elif command in TAGS_WITH_COUNT:
            tag = f"{command} {result.rowcount}"
        else:
            tag = command
        if not translated.returns_rows:
            return Outcome(tag)
        columns = self._columns(translated, result)
        return Outcome(tag, columns, _padded(result))

    def _columns(self, translated: tr.Translated, result: Result) -> tuple[Column, ...]:
        types = translated.column_types or ()
        names = translated.column_names or result.columns
        columns = []
        for index, name in enumerate(names):
            type_name = types[index] if index < len(types) else "unknown"
            if type_name == "unknown" and index < len(result.decltypes):
                declared = result.decltypes[index]
                type_name = pg_type_of_declared(declared) if declared else "unknown"
            if type_name == "unknown":
                type_name = _type_of_values(result.rows, index)
            columns.append(Column(name, pg_types.oid_of(type_name)))
        return tuple(columns)

    # -- session statements ---------------------------------------------------------

    async def _action(
        self, translated: tr.Translated, action: Any, parameters: Sequence[Any]
    ) -> Outcome:
        if isinstance(action, utility.SetAction):
            return self._set(action)
        if isinstance(action, utility.ShowAction):
            return self._show(action)
        if isinstance(action, utility.ResetAction):
            return self._reset(action)
        if isinstance(action, utility.TransactionAction):
            return await self._transaction_control(action)
        if isinstance(action, utility.CopyAction):
            return await self._copy_start(action, parameters)
        raise AssertionError(f"unknown action {action!r}")

    def _set(self, action: utility.SetAction) -> Outcome:
        name = action.name.lower()
        if action.value is None:  # SET name TO DEFAULT
            return self._reset(utility.ResetAction(action.name))
        value = action.value
        if name == "client_encoding" and value.upper().replace("-", "") not in ("UTF8", "UNICODE"):
            raise SqlError(f'conversion to encoding "{value}" is not supported', "0A000")
        if name == "transaction_read_only" and value in ("off", "false") and self._shared.read_only:
            raise SqlError("cannot set transaction read-write mode during recovery", "25006")
        if action.local:
            if self._session.in_transaction:
                # The value before the transaction's first SET LOCAL comes back at its end.
                self._transaction.local_settings.setdefault(name, self.settings.get(name, ""))
                self.settings[name] = value
        else:
            self.settings[name] = value
        reported = {action.name: value} if name in REPORTED else {}
        return Outcome("SET", parameter_status=reported)

    def _show(self, action: utility.ShowAction) -> Outcome:
        name = action.name.lower()
        if name == "all":
            rows = sorted((key, value, "") for key, value in self.settings.items())
            columns = tuple(Column(each, TEXT_OID) for each in ("name", "setting", "description"))
            return Outcome("SHOW", columns, rows)
        if name not in self.settings:
            raise SqlError(f'unrecognized configuration parameter "{action.name}"', "42704")
        return Outcome("SHOW", (Column(name, TEXT_OID),), [(self.settings[name],)])

    def _reset(self, action: tr.ResetAction) -> Outcome:
        defaults = default_settings(
            self._startup.user, self._shared.server_version, self._shared.read_only
        )
        names = list(defaults) if action.name.lower() == "all" else [action.name.lower()]
        reported = {}
        for name in names:
            if name in defaults:
                self.settings[name] = defaults[name]
                if name in REPORTED:
                    reported[name] = defaults[name]
        return Outcome("RESET", parameter_status=reported)

    async def _transaction_control(self, action: utility.TransactionAction) -> Outcome:
        kind = action.kind
        session = self._session
        if kind == "begin":
            if session.in_transaction:
                # PostgreSQL warns (25001) and goes on inside the transaction.
                return Outcome("BEGIN")
            await self._statement("BEGIN")
            self._transaction = _Transaction()
            return Outcome("BEGIN")
        if kind in ("commit", "rollback"):
            if not session.in_transaction:
                # PostgreSQL warns (25P01) and does nothing.
                return Outcome("COMMIT" if kind == "commit" else "ROLLBACK")
            failed = session.transaction_failed
            transaction = self._transaction
            try:
                await self._statement("COMMIT" if kind == "commit" else "ROLLBACK")
            finally:
                self._end_transaction(transaction)
            if transaction.ran_ddl:
                await self._schema_changed()
            return Outcome("ROLLBACK" if failed or kind == "rollback" else "COMMIT")
        name = '"' + (action.savepoint or "").replace('"', '""') + '"'
        if kind == "savepoint":
            if not session.in_transaction:
                raise SqlError("SAVEPOINT can only be used in transaction blocks", "25P01")
            await self._statement(f"SAVEPOINT {name}")
            return Outcome("SAVEPOINT")
        if kind == "release":
            await self._statement(f"RELEASE SAVEPOINT {name}")
            return Outcome("RELEASE")
        await self._statement(f"ROLLBACK TO SAVEPOINT {name}")
        return Outcome("ROLLBACK")

    def _end_transaction(self, transaction: _Transaction) -> None:
        self.settings.update(transaction.local_settings)
        self._transaction = _Transaction()

    async def _copy_start(self, action: utility.CopyAction, parameters: Sequence[Any]) -> Outcome:
        if action.direction == "out":
            query = action.query
            assert isinstance(query, tr.Translated), action
            result = await self._run(query, parameters)
            columns = self._columns(query, result)
            return Outcome(
                f"COPY {len(result.rows)}",
                columns,
                result.rows,
                copy=_copy_spec(action, len(columns)),
            )
        assert action.table is not None
        if self._shared.read_only:
            raise SqlError("cannot execute COPY FROM in a read-only transaction", "25006")
        table_columns = self._shared.schema.columns_of(action.table)
        if table_columns is None:
            raise SqlError(f'relation "{action.table}" does not exist', "42P01")
        types = dict(table_columns)
        names = list(action.columns) if action.columns else [name for name, _ in table_columns]
        for name in names:
            if name not in types:
                raise SqlError(
                    f'column "{name}" of relation "{action.table}" does not exist', "42703"
                )
        began = not self._session.in_transaction
        if began:
            await self._statement("BEGIN IMMEDIATE")
        placeholders = ", ".join("?" for _ in names)
        quoted = ", ".join('"' + name.replace('"', '""') + '"' for name in names)
        self._copy = _Copy(
            f'INSERT INTO "{action.table}" ({quoted}) VALUES ({placeholders})',
            tuple(pg_types.oid_of(types[name]) for name in names),
            began,
        )
        return Outcome("COPY", copy=_copy_spec(action, len(names)))

    async def _schema_changed(self) -> None:
        if self._session.in_transaction:
            self._transaction.ran_ddl = True
        await self._shared.schema.reload(self._session)
        self._shared.translator.invalidate()


_CHARACTER = re.compile(r"\s*(?:char|character|bpchar)\s*\(\s*(\d+)\s*\)\s*", re.IGNORECASE)


def _padded(result: Result) -> Sequence[tuple[Any, ...]]:
    """Rows with char(n) columns blank-padded to n, as PostgreSQL returns them
    (SQLite keeps the text as inserted)."""
    widths = [
        (index, width)
        for index, declared in enumerate(result.decltypes)
        if (width := _character_width(declared)) is not None
    ]
    if not widths:
        return result.rows
    rows = []
    for row in result.rows:
        values = list(row)
        for index, width in widths:
            value = values[index]
            if isinstance(value, str) and len(value) < width:
                values[index] = value.ljust(width)
        rows.append(tuple(values))
    return rows


@functools.lru_cache(maxsize=1024)
def _character_width(declared: str | None) -> int | None:
    """n of a declared char(n) (cached: asked for every column of every result)."""
    match = _CHARACTER.fullmatch(declared) if declared else None
    return int(match[1]) if match else None


def _copy_spec(action: utility.CopyAction, column_count: int) -> CopySpec:
    return CopySpec(
        action.direction,
        action.format,
        column_count,
        delimiter=action.delimiter,
        null=action.null,
        header=action.header,
        quote=action.quote,
        escape=action.escape,
    )


def _type_of_values(rows: Sequence[tuple[Any, ...]], index: int) -> str:
    for row in rows:
        value = row[index]
        if value is not None:
            return _TYPE_OF_VALUE.get(type(value), "text")
    return "text"
