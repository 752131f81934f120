"""The Alembic migrations build exactly the schema of the models, on SQLite and PostgreSQL."""


import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from db.migrate import upgrade_to_head
from db.models import Base

pytestmark = pytest.mark.pg  # ``engine``: SQLite, and PostgreSQL when configured


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


def test_0004_backfills_run_precision_from_the_device(fresh_url):
    """Runs made before configurations take their device's precision and are not unstable."""
    from alembic import command
    from sqlalchemy import text

    from db.migrate import alembic_config

    command.upgrade(alembic_config(fresh_url), "0001")
    engine = create_engine(fresh_url)
    now = "2026-01-01 00:00:00+00:00"
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO devices (id, name, platform, runtime, precision, metadata, table_gen, "
                          "created_at) VALUES (1, 'old-phone', 'android', 'x', 'fp16', '{}', 0, :t)"), {"t": now})
        conn.execute(text("INSERT INTO spaces (id, name, version, n_ops, registered_at) "
                          "VALUES (1, 'fbnet-cifar', 'v', 1, :t)"), {"t": now})
        conn.execute(text("INSERT INTO runs (id, device_id, space_id, space_version, transport, agent_version, "
                          "runtime, runtime_version, temps_before, temps_after, cpu_freqs_before, cpu_freqs_after, "
                          "status, created_at, extra) VALUES (7, 1, 1, 'v', 'adb', '0.1', 'et', '1', '{}', '{}', "
                          "'{}', '{}', 'finished', :t, '{}')"), {"t": now})
    upgrade_to_head(fresh_url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT precision, unstable FROM runs WHERE id = 7")).one()
    engine.dispose()
    assert row[0] == "fp16" and not row[1]


def test_0010_adds_grid_fits_to_a_database_at_0009(fresh_url):
    """A database at 0009 gains an empty grid_fits (one row per content hash); 0010 downgrades."""
    from alembic import command
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    from db.migrate import alembic_config

    command.upgrade(alembic_config(fresh_url), "0009_validation_idempotency_key")
    engine = create_engine(fresh_url)
    now = "2026-01-01 00:00:00+00:00"
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO devices (id, name, platform, runtime, precision, metadata, table_gen, "
                          "created_at) VALUES (1, 'phone', 'android', 'x', 'fp32', '{}', 0, :t)"), {"t": now})
        conn.execute(text("INSERT INTO spaces (id, name, version, n_ops, registered_at) "
                          "VALUES (1, 'fbnetv2-cifar', 'v', 1, :t)"), {"t": now})
    upgrade_to_head(fresh_url)
    row = ("INSERT INTO grid_fits (content_hash, device_id, space_id, config_id, kind, n_ops, predicted, meta, "
           "created_at) VALUES ('h', 1, 1, 'c', 'padded+gbm', 1, :p, '{}', :t)")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM grid_fits")).scalar() == 0
        conn.execute(text(row), {"p": b"\x00" * 8, "t": now})
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text(row), {"p": b"\x00" * 8, "t": now})
    command.downgrade(alembic_config(fresh_url), "0009_validation_idempotency_key")
    with engine.connect() as conn:
        assert "grid_fits" not in inspect(conn).get_table_names()
    engine.dispose()
