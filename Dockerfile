# The profiler service only (no torch): FastAPI + SQLAlchemy on SQLite or PostgreSQL.
FROM python:3.11-slim
WORKDIR /app
RUN pip install --no-cache-dir fastapi==0.165.0 uvicorn==0.54.0 sqlalchemy==2.1.9 alembic==1.20.1 \
        pydantic==2.14.4 pydantic-settings==2.16.3 typer==0.29.2 rich==15.0.0 pyyaml==6.0.4 \
        scipy==1.17.1 numpy==2.4.6 matplotlib==3.11.2 httpx==0.28.1 "psycopg[binary]==3.3.9"
COPY search/__init__.py search/space.py search/
COPY db/ db/
COPY profiler_server/ profiler_server/
ENV PYTHONPATH=/app FBNET_DB_URL=sqlite:////data/fbnet.db
VOLUME /data
EXPOSE 8000
HEALTHCHECK CMD python -c "import httpx; httpx.get('http://127.0.0.1:8000/healthz').raise_for_status()"
CMD ["python", "-m", "profiler_server.cli", "serve", "--host", "0.0.0.0", "--port", "8000"]
