"""DDL: CREATE / DROP / ALTER / TRUNCATE written out as SQLite text by hand.

Column types keep their PostgreSQL names as SQLite declared types, so
compute_node/sql/types.py reads them back; constraints are named as PostgreSQL
names them (t_pkey, t_col_key, t_col_fkey, t_col_check), which SQLite keeps in the
table's stored SQL for the catalog emulation to read.
"""

from __future__ import annotations

from sqlglot import exp

from borealis.errors import SqlError
from compute_node.sql.infer import Schema
from compute_node.sql.rewrite import Rewriter, unsupported

_SERIALS = (exp.DType.SERIAL, exp.DType.BIGSERIAL, exp.DType.SMALLSERIAL)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _expression(node: exp.Expression) -> str:
    """An expression in DDL (DEFAULT, CHECK, index columns): now() reads SQLite's
    clock, as there is no transaction to bind."""
    rewritten = Rewriter(now_index=0, in_ddl=True).rewrite(node.copy())
    return rewritten.sql("sqlite")


def declared_type(data_type: exp.DataType) -> str:
    if data_type.this == exp.DType.ARRAY:
        raise unsupported("array columns")
    text = data_type.sql("postgres")
    if text.startswith("DECIMAL"):
        text = "NUMERIC" + text[len("DECIMAL") :]
    return {"INT": "INTEGER"}.get(text, text).replace(", ", ",")


def _is_identity(column: exp.ColumnDef) -> bool:
    kind = column.args.get("kind")
    if isinstance(kind, exp.DataType) and kind.this in _SERIALS:
        return True
    return any(
        isinstance(constraint.kind, exp.GeneratedAsIdentityColumnConstraint)
        for constraint in column.constraints
    )


def _names(node: exp.Expression) -> list[str]:
    items = node.expressions if node.expressions else []
    if isinstance(node.this, exp.Schema):
        items = node.this.expressions
    return [item.name for item in items]


def _reference(reference: exp.Reference) -> str:
    target = reference.this
    table = target.this if isinstance(target, exp.Schema) else target
    columns = target.expressions if isinstance(target, exp.Schema) else []
    text = f"REFERENCES {_quote(table.name)}"
    if columns:
        text += " (" + ", ".join(_quote(column.name) for column in columns) + ")"
    options = " ".join(str(option) for option in reference.args.get("options") or [])
    return f"{text} {options.upper()}".rstrip()


def _column_constraint(
    table: str, column: str, constraint: exp.ColumnConstraint, identity_key: bool
) -> str | None:
    kind = constraint.kind
    named = constraint.args.get("this")
    prefix = f"CONSTRAINT {_quote(named.name)} " if named is not None else ""
    if isinstance(kind, exp.NotNullColumnConstraint):
        return "NULL" if kind.args.get("allow_null") else "NOT NULL"
    if isinstance(kind, exp.DefaultColumnConstraint):
        return f"DEFAULT ({_expression(kind.this)})"
    if isinstance(kind, exp.PrimaryKeyColumnConstraint):
        return (prefix or f"CONSTRAINT {_quote(table + '_pkey')} ") + "PRIMARY KEY"
    if isinstance(kind, exp.UniqueColumnConstraint):
        return (prefix or f"CONSTRAINT {_quote(f'{table}_{column}_key')} ") + "UNIQUE"
    if isinstance(kind, exp.Reference):
        name = prefix or f"CONSTRAINT {_quote(f'{table}_{column}_fkey')} "
        return name + _reference(kind)
    if isinstance(kind, exp.CheckColumnConstraint):
        name = prefix or f"CONSTRAINT {_quote(f'{table}_{column}_check')} "
        return f"{name}CHECK ({_expression(kind.this)})"
    if isinstance(kind, exp.GeneratedAsIdentityColumnConstraint):
        return None
    if isinstance(kind, exp.CollateColumnConstraint):
        return None
    raise unsupported(f"column constraint {constraint.sql('postgres')}")


def _table_primary_key(schema_node: exp.Schema) -> list[str]:
    for item in schema_node.expressions:
        key = item.expressions[0] if isinstance(item, exp.Constraint) else item
        if isinstance(key, exp.PrimaryKey):
            return _names(key)
    return []


def _column_def(table: str, column: exp.ColumnDef, table_key: list[str]) -> tuple[str, bool]:
    """The column's SQLite definition, and whether it took the table's key."""
    name = column.name
    has_key = any(
        isinstance(constraint.kind, exp.PrimaryKeyColumnConstraint)
        for constraint in column.constraints
    )
    if _is_identity(column):
        if not has_key and table_key != [name]:
            raise unsupported(f'SERIAL or identity column "{name}" that is not the primary key')
        # Only the exact declared type INTEGER makes the key SQLite's rowid;
        # AUTOINCREMENT never reuses a deleted row's id, as a sequence does not, and
        # tells the catalog the column is serial (its default reads as nextval()).
        parts = [
            _quote(name),
            "INTEGER",
            f"CONSTRAINT {_quote(table + '_pkey')} PRIMARY KEY AUTOINCREMENT",
        ]
        for constraint in column.constraints:
            if isinstance(constraint.kind, exp.PrimaryKeyColumnConstraint):
                continue
            text = _column_constraint(table, name, constraint, True)
            if text is not None and text != "NOT NULL":
                parts.append(text)
        return " ".join(parts), not has_key
    kind = column.args.get("kind")
    parts = [_quote(name)] + ([declared_type(kind)] if isinstance(kind, exp.DataType) else [])
    for constraint in column.constraints:
        text = _column_constraint(table, name, constraint, False)
        if text is not None:
            parts.append(text)
    return " ".join(parts), False


def _table_constraint(table: str, item: exp.Expression) -> str:
    name: str | None = None
    if isinstance(item, exp.Constraint):
        name = item.name
        item = item.expressions[0]
    columns = _names(item)
    listed = ", ".join(_quote(column) for column in columns)
    if isinstance(item, exp.PrimaryKey):
        return f"CONSTRAINT {_quote(name or table + '_pkey')} PRIMARY KEY ({listed})"
    if isinstance(item, exp.UniqueColumnConstraint):
        default = f"{table}_{'_'.join(columns)}_key"
        return f"CONSTRAINT {_quote(name or default)} UNIQUE ({listed})"
    if isinstance(item, exp.ForeignKey):
        default = f"{table}_{'_'.join(columns)}_fkey"
        reference = _reference(item.args["reference"])
        return f"CONSTRAINT {_quote(name or default)} FOREIGN KEY ({listed}) {reference}"
    if isinstance(item, exp.CheckColumnConstraint):
        return f"CONSTRAINT {_quote(name or table + '_check')} CHECK ({_expression(item.this)})"
    raise unsupported(f"table constraint {item.sql('postgres')}")


def _create_table(statement: exp.Create) -> str:
    schema_node = statement.this
    if not isinstance(schema_node, exp.Schema):
        raise unsupported("CREATE TABLE AS")
    table = schema_node.this.name
    table_key = _table_primary_key(schema_node)
    parts: list[str] = []
    key_taken = False
    for item in schema_node.expressions:
        if isinstance(item, exp.ColumnDef):
            text, took = _column_def(table, item, table_key)
            key_taken = key_taken or took
            parts.append(text)
    for item in schema_node.expressions:
        if isinstance(item, exp.ColumnDef):
            continue
        key = item.expressions[0] if isinstance(item, exp.Constraint) else item
        if key_taken and isinstance(key, exp.PrimaryKey):
            continue
        parts.append(_table_constraint(table, item))
    properties = statement.args.get("properties")
    temporary = properties is not None and any(
        isinstance(each, exp.TemporaryProperty) for each in properties.expressions
    )
    exists = " IF NOT EXISTS" if statement.args.get("exists") else ""
    head = f"CREATE {'TEMP ' if temporary else ''}TABLE{exists} {_quote(table)}"
    return f"{head} ({', '.join(parts)})"


def _create_index(statement: exp.Create) -> str:
    index = statement.this
    table = index.args["table"].name
    parameters = index.args.get("params")
    columns = parameters.args.get("columns") if parameters is not None else None
    if not columns:
        raise unsupported("CREATE INDEX without columns")
    if parameters.args.get("include"):
        raise unsupported("CREATE INDEX ... INCLUDE")
    items: list[str] = []
    names: list[str] = []
    for ordered in columns:
        expression = ordered.this if isinstance(ordered, exp.Ordered) else ordered
        descending = isinstance(ordered, exp.Ordered) and ordered.args.get("desc")
        items.append(_expression(expression) + (" DESC" if descending else ""))
        names.append(expression.name if isinstance(expression, exp.Column) else "expr")
    name = index.name or f"{table}_{'_'.join(names)}_idx"
    unique = "UNIQUE " if statement.args.get("unique") else ""
    exists = "IF NOT EXISTS " if statement.args.get("exists") else ""
    where = parameters.args.get("where")
    tail = f" WHERE {_expression(where.this)}" if where is not None else ""
    listed = ", ".join(items)
    return f"CREATE {unique}INDEX {exists}{_quote(name)} ON {_quote(table)} ({listed}){tail}"


def _create(statement: exp.Create, schema: Schema) -> tuple[str | None, str]:
    kind = str(statement.args.get("kind") or "").upper()
    if kind == "TABLE":
        return _create_table(statement), "CREATE TABLE"
    if kind == "INDEX":
        return _create_index(statement), "CREATE INDEX"
    if kind == "VIEW":
        body = statement.expression.copy()
        text = Rewriter(now_index=0, in_ddl=True).rewrite(body).sql("sqlite")
        exists = "IF NOT EXISTS " if statement.args.get("exists") else ""
        return f"CREATE VIEW {exists}{_quote(statement.this.name)} AS {text}", "CREATE VIEW"
    if kind == "SCHEMA":
        if statement.this.db.lower() == "public" and statement.args.get("exists"):
            return None, "CREATE SCHEMA"
        raise unsupported("CREATE SCHEMA (only the public schema exists)")
    raise unsupported(f"CREATE {kind}")


def _drop(statement: exp.Drop) -> tuple[str | None, str]:
    kind = str(statement.args.get("kind") or "").upper()
    if kind not in ("TABLE", "INDEX", "VIEW"):
        raise unsupported(f"DROP {kind}")
    exists = " IF EXISTS" if statement.args.get("exists") else ""
    # CASCADE / RESTRICT: SQLite drops the table's indexes and triggers itself;
    # other dependents are not tracked.
    statements = [
        f"DROP {kind}{exists} {_quote(table.name)}" for table in statement.args.get("tables") or []
    ]
    if not statements:
        statements = [f"DROP {kind}{exists} {_quote(statement.this.name)}"]
    return "; ".join(statements), f"DROP {kind}"


def _add_constraint(table: str, action: exp.AddConstraint) -> str | None:
    item = action.expressions[0]
    name: str | None = None
    if isinstance(item, exp.Constraint):
        name, item = item.name, item.expressions[0]
    columns = ", ".join(_quote(column) for column in _names(item))
    if isinstance(item, exp.PrimaryKey):
        return (
            f"CREATE UNIQUE INDEX {_quote(name or table + '_pkey')} ON {_quote(table)} ({columns})"
        )
    if isinstance(item, exp.UniqueColumnConstraint):
        default = f"{table}_{'_'.join(_names(item))}_key"
        return f"CREATE UNIQUE INDEX {_quote(name or default)} ON {_quote(table)} ({columns})"
    if isinstance(item, exp.ForeignKey):
        # SQLite cannot add a foreign key to a table; accepted and not enforced.
        return None
    raise unsupported(f"ALTER TABLE ADD {item.sql('postgres')}")


def _alter(statement: exp.Alter) -> tuple[str | None, str]:
    if str(statement.args.get("kind") or "").upper() != "TABLE":
        raise unsupported(f"ALTER {statement.args.get('kind')}")
    table = statement.this.name
    statements: list[str] = []
    for action in statement.args.get("actions") or []:
        if isinstance(action, exp.AddConstraint):
            text = _add_constraint(table, action)
        elif isinstance(action, exp.ColumnDef):
            if _is_identity(action):
                raise unsupported("ALTER TABLE ADD COLUMN with SERIAL or identity")
            text = f"ALTER TABLE {_quote(table)} ADD COLUMN {_column_def(table, action, [])[0]}"
        elif isinstance(action, exp.Drop) and str(action.args.get("kind")).upper() == "COLUMN":
            column = action.args["tables"][0].name
            text = f"ALTER TABLE {_quote(table)} DROP COLUMN {_quote(column)}"
        elif isinstance(action, exp.AlterRename):
            text = f"ALTER TABLE {_quote(table)} RENAME TO {_quote(action.this.name)}"
        elif isinstance(action, exp.RenameColumn):
            old, new = action.this.name, action.args["to"].name
            text = f"ALTER TABLE {_quote(table)} RENAME COLUMN {_quote(old)} TO {_quote(new)}"
        else:
            raise unsupported(f"ALTER TABLE {action.sql('postgres')}")
        if text is not None:
            statements.append(text)
    return ("; ".join(statements) or None), "ALTER TABLE"


def _truncate(statement: exp.TruncateTable) -> tuple[str | None, str]:
    # RESTART IDENTITY: rowid keys restart by themselves once the table is empty.
    tables = [table.name for table in statement.expressions]
    return "; ".join(f"DELETE FROM {_quote(table)}" for table in tables), "TRUNCATE TABLE"


def translate_ddl(statement: exp.Expression, schema: Schema) -> tuple[str | None, str] | None:
    """(SQLite text or None, command tag) for a DDL statement; None for others."""
    if isinstance(statement, exp.Create):
        return _create(statement, schema)
    if isinstance(statement, exp.Drop):
        return _drop(statement)
    if isinstance(statement, exp.Alter):
        return _alter(statement)
    if isinstance(statement, exp.TruncateTable):
        return _truncate(statement)
    if isinstance(statement, (exp.Comment, exp.Grant)):
        raise unsupported(type(statement).__name__.upper())
    return None


__all__ = ["SqlError", "declared_type", "translate_ddl"]
