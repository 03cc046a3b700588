"""Must hold 4: SQLAlchemy 2 with the psycopg driver: create_all, the ORM, and inspect()."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from decimal import Decimal

import pytest
import sqlalchemy
from sqlalchemy import ForeignKey, Numeric, String, func, inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from tests.support import pg_endpoint as endpoints
from tests.support.pg_endpoint import PgEndpoint

pytestmark = pytest.mark.integration

# The shared fixtures, bound here so pytest finds them in this module.
deadline_guard = endpoints.deadline_guard
pg_endpoint = endpoints.pg_endpoint
table_name = endpoints.table_name


@pytest.fixture
def engine(pg_endpoint: PgEndpoint) -> Iterator[Engine]:
    engine = sqlalchemy.create_engine(pg_endpoint.sqlalchemy_url, pool_size=2, max_overflow=0)
    try:
        yield engine
    finally:
        engine.dispose()


def make_models(prefix: str) -> tuple[type[DeclarativeBase], type, type]:
    """An Account/Payment model pair on tables named after `prefix` (unique per test)."""

    class Base(DeclarativeBase):
        pass

    class Account(Base):
        __tablename__ = f"{prefix}_account"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(50), unique=True)
        balance: Mapped[Decimal] = mapped_column(Numeric(12, 2), default=Decimal("0"))
        opened: Mapped[datetime.datetime] = mapped_column(
            sqlalchemy.DateTime(timezone=True), server_default=func.now()
        )
        payments: Mapped[list[Payment]] = relationship(back_populates="account")

    class Payment(Base):
        __tablename__ = f"{prefix}_payment"
        id: Mapped[int] = mapped_column(primary_key=True)
        account_id: Mapped[int] = mapped_column(ForeignKey(f"{prefix}_account.id"))
        amount: Mapped[Decimal] = mapped_column(Numeric(12, 2))
        at: Mapped[datetime.datetime] = mapped_column(sqlalchemy.DateTime(timezone=True))
        account: Mapped[Account] = relationship(back_populates="payments")

    return Base, Account, Payment


def test_create_all_orm_insert_and_query(engine: Engine, table_name: str) -> None:
    base, account_class, payment_class = make_models(table_name)
    base.metadata.create_all(engine)
    at = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
    with Session(engine) as session:
        alice = account_class(name="alice", balance=Decimal("10.50"))
        bob = account_class(name="bob")
        session.add_all([alice, bob])
        session.flush()
        assert alice.id is not None and bob.id is not None and alice.id != bob.id
        alice.payments.append(payment_class(amount=Decimal("2.25"), at=at))
        alice.payments.append(payment_class(amount=Decimal("-1.00"), at=at))
        session.commit()

    with Session(engine) as session:
        found = session.scalars(select(account_class).where(account_class.name == "alice")).one()
        assert found.balance == Decimal("10.50")
        assert found.opened.tzinfo is not None
        assert sorted(payment.amount for payment in found.payments) == [
            Decimal("-1.00"),
            Decimal("2.25"),
        ]
        assert found.payments[0].at == at
        total = session.scalar(
            select(func.sum(payment_class.amount))
            .join(account_class)
            .where(account_class.name == "alice")
        )
        assert total == Decimal("1.25")
        names = session.scalars(select(account_class.name).order_by(account_class.id)).all()
        assert names == ["alice", "bob"]
    base.metadata.drop_all(engine)


def test_foreign_key_is_enforced(engine: Engine, table_name: str) -> None:
    base, _, payment_class = make_models(table_name)
    base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(
            payment_class(
                account_id=999_999, amount=Decimal("1"), at=datetime.datetime.now(datetime.UTC)
            )
        )
        with pytest.raises(sqlalchemy.exc.IntegrityError) as raised:
            session.commit()
    assert raised.value.orig is not None
    assert getattr(raised.value.orig, "sqlstate", None) == "23503"
    base.metadata.drop_all(engine)


def test_inspect_columns_and_has_table(engine: Engine, table_name: str) -> None:
    base, _, _ = make_models(table_name)
    inspector = inspect(engine)
    assert not inspector.has_table(f"{table_name}_account")
    base.metadata.create_all(engine)
    inspector = inspect(engine)
    assert inspector.has_table(f"{table_name}_account")
    assert inspector.has_table(f"{table_name}_payment")
    assert f"{table_name}_account" in inspector.get_table_names()

    columns = {column["name"]: column for column in inspector.get_columns(f"{table_name}_account")}
    assert list(columns) == ["id", "name", "balance", "opened"]
    assert isinstance(columns["id"]["type"], sqlalchemy.INTEGER)
    assert columns["id"]["nullable"] is False
    # SERIAL: the default is the sequence (PostgreSQL) or marked autoincrement.
    assert "nextval" in str(columns["id"]["default"]) or columns["id"].get("autoincrement")
    assert isinstance(columns["name"]["type"], sqlalchemy.VARCHAR)
    assert columns["name"]["type"].length == 50
    assert isinstance(columns["balance"]["type"], sqlalchemy.NUMERIC)
    assert (columns["balance"]["type"].precision, columns["balance"]["type"].scale) == (12, 2)
    assert isinstance(columns["opened"]["type"], sqlalchemy.TIMESTAMP)
    assert columns["opened"]["type"].timezone is True
    assert "now()" in str(columns["opened"]["default"])

    primary_key = inspector.get_pk_constraint(f"{table_name}_payment")
    assert primary_key["constrained_columns"] == ["id"]
    (foreign_key,) = inspector.get_foreign_keys(f"{table_name}_payment")
    assert foreign_key["referred_table"] == f"{table_name}_account"
    assert foreign_key["constrained_columns"] == ["account_id"]
    assert foreign_key["referred_columns"] == ["id"]
    base.metadata.drop_all(engine)
    assert not inspect(engine).has_table(f"{table_name}_account")
