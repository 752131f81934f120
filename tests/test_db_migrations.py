"""The Alembic migrations build exactly the schema of the models, on SQLite and PostgreSQL."""

import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from conftest import ENGINES, _pg_exec, _pg_schema_url
from sqlalchemy import create_engine, inspect

from db.migrate import upgrade_to_head
from db.models import Base


@pytest.fixture(params=ENGINES)
def fresh_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    schema = f"m_{uuid.uuid4().hex[:12]}"
    _pg_exec(f'CREATE SCHEMA "{schema}"')
    yield _pg_schema_url(schema)
    _pg_exec(f'DROP SCHEMA "{schema}" CASCADE')


def test_migrations_match_models(fresh_url):
    upgrade_to_head(fresh_url)
    upgrade_to_head(fresh_url)  # idempotent: a restarted server finds head
    engine = create_engine(fresh_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        tables = set(inspect(conn).get_table_names())
    engine.dispose()
    assert diff == [], f"models and migrations differ: {diff}"
    assert set(Base.metadata.tables) <= tables and "alembic_version" in tables
