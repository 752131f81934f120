# The profiler service only (no torch): FastAPI + SQLAlchemy on SQLite or PostgreSQL.
# Versions come from pyproject.toml (the `server` extra); nothing is pinned twice.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY fbnet/ fbnet/
COPY db/ db/
COPY profiler_server/ profiler_server/
RUN pip install --no-cache-dir '.[server]'
ENV FBNET_DB_URL=sqlite:////data/fbnet.db
VOLUME /data
EXPOSE 8000
HEALTHCHECK CMD python -c "import httpx; httpx.get('http://127.0.0.1:8000/healthz').raise_for_status()"
# 0.0.0.0 inside the container: its own network namespace, reachable only through a published port
# (bound to 127.0.0.1 it would be reachable from nowhere). Who reaches it is the publish address's
# decision: docker-compose.yml publishes on the host's loopback only, for a reverse proxy on the host
# (README, "Deployment"). The limits (FBNET_HEADER_TIMEOUT_S, FBNET_MAX_INFLIGHT, ...) have their defaults.
CMD ["fbnet-server", "serve", "--host", "0.0.0.0", "--port", "8000"]
