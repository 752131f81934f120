"""Storage of the profiler service: SQLAlchemy 2.x models, engine/session setup, Alembic migrations."""
