"""Storage of the profiler service: SQLAlchemy 2.x models, engine setup, Alembic migrations, table
summaries, backup and checks, the table-generation probe. Imported by ``profiler_server`` only (the
search and the agents never touch the database); imports ``fbnet`` for the table maths, no app.
"""
