"""Atomic jobs: the handler's database writes commit with the completion."""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import Deliverer
from conftest import make_app
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from flask_qstash import JobContext
from flask_qstash import QStash
from flask_qstash.idempotency import ClaimState
from flask_qstash.idempotency import SQLAlchemyStore


class Base(DeclarativeBase):
    pass


class Effect(Base):
    __tablename__ = "effects"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[str]


@pytest.fixture
def setup(
    request: pytest.FixtureRequest, qstash: QStash, tmp_path: Path
) -> t.Iterator[tuple[Flask, SQLAlchemy, list[str]]]:
    db = SQLAlchemy(model_class=Base)
    app = make_app(
        request.module.__name__,
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'app.db'}",
        QSTASH_IDEMPOTENCY_STORE="sqlalchemy",
    )
    db.init_app(app)
    calls: list[str] = []

    @qstash.job("charge", atomic=True)
    def charge(payload: dict[str, t.Any], ctx: JobContext) -> str:
        calls.append(ctx.message_id)
        db.session.add(Effect(message_id=ctx.message_id))

        if payload.get("fail"):
            raise RuntimeError("card declined")

        return "charged"

    qstash.init_app(app)

    with app.app_context():
        db.create_all()

    yield app, db, calls

    with app.app_context():
        db.engine.dispose()


def _effects(app: Flask, db: SQLAlchemy) -> list[str]:
    with app.app_context():
        return list(db.session.scalars(sa.select(Effect.message_id)))


def test_success_commits_the_effect_once(
    setup: tuple[Flask, SQLAlchemy, list[str]],
) -> None:
    app, db, calls = setup
    deliver = Deliverer(app.test_client())

    first = deliver("charge", {}, message_id="msg_a")
    again = deliver("charge", {}, message_id="msg_a")

    assert first.status_code == 200
    assert again.status_code == 200
    assert again.get_json() == {"status": "done", "result": "charged"}
    assert calls == ["msg_a"]
    assert _effects(app, db) == ["msg_a"]


def test_failure_rolls_the_effect_back(
    setup: tuple[Flask, SQLAlchemy, list[str]],
) -> None:
    app, db, calls = setup
    deliver = Deliverer(app.test_client())
    committed: list[int] = []

    # Commit whatever the session still holds when the context ends, as some
    # apps do. Teardowns run last-registered first, so this runs before
    # Flask-SQLAlchemy discards the session: only the rollback can keep the
    # failed run's write out.
    @app.teardown_appcontext
    def commit_leftovers(exc: BaseException | None) -> None:
        committed.append(len(db.session.new))
        db.session.commit()

    rv = deliver("charge", {"fail": True}, message_id="msg_b")

    assert rv.status_code == 500
    assert calls == ["msg_b"]
    assert committed == [0]
    assert _effects(app, db) == []

    with app.app_context():
        store = app.extensions["qstash"].store
        assert store.get("acme:msg_b") is None


def test_lost_lease_rolls_the_effect_back(
    setup: tuple[Flask, SQLAlchemy, list[str]],
) -> None:
    app, db, calls = setup
    deliver = Deliverer(app.test_client())

    with app.app_context():
        store = app.extensions["qstash"].store

    assert isinstance(store, SQLAlchemyStore)
    original = store.claim

    # Another delivery takes the key over while this one runs: the first
    # claim's token no longer owns the record when the handler returns.
    def claim_then_lose(key: str, **kwargs: t.Any) -> t.Any:
        claim = original(key, **kwargs)

        if key == "acme:msg_c" and claim.state is ClaimState.CLAIMED:
            with store.engine.begin() as conn:
                conn.execute(
                    sa.update(store.table)
                    .where(store.table.c.key == key)
                    .values(token="someone-else")
                )

        return claim

    store.claim = claim_then_lose  # type: ignore[method-assign]
    rv = deliver("charge", {}, message_id="msg_c")

    assert rv.status_code == 409
    assert rv.headers["Retry-After"] == "1"
    assert calls == ["msg_c"]
    assert _effects(app, db) == []


def test_atomic_job_needs_the_sqlalchemy_store(
    request: pytest.FixtureRequest, qstash: QStash
) -> None:
    @qstash.job("charge", atomic=True)
    def charge(payload: t.Any) -> None:
        pass

    app = make_app(request.module.__name__)

    with pytest.raises(ValueError, match="QSTASH_IDEMPOTENCY_STORE"):
        qstash.init_app(app)

    # Nothing was half set up: no extension, no routes.
    assert "qstash" not in app.extensions
    assert not [r for r in app.url_map.iter_rules() if r.rule.startswith("/qstash")]
