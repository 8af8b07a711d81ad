"""The Alembic migrations build exactly the tables chatforge/db/models.py declares, and step down and up again."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Float, create_engine

from chatforge.db.models import Base
from chatforge.migrate import downgrade, upgrade


def _same_storage(diff) -> bool:
    """FLOAT in a migration and Double in a model are one column type on SQLite (REAL) and PostgreSQL."""
    return (isinstance(diff, list) and len(diff) == 1 and diff[0][0] == "modify_type"
            and all(isinstance(t, Float) for t in diff[0][-2:]))


def _diff(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    return [d for d in diffs if not _same_storage(d)]


def test_models_match_the_migrations_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    assert _diff(url) == []


def test_models_match_the_migrations_on_postgres(pg_url):
    upgrade(pg_url)
    assert _diff(pg_url) == []


def test_latest_migration_steps_down_and_up(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    downgrade(url, "0006")
    assert _diff(url) != []
    upgrade(url)
    assert _diff(url) == []
