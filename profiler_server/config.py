"""Settings of the service, read from the environment (``FBNET_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from profiler_server.errors import DomainError

MiB = 1024 * 1024
MIN_ADMIN_TOKEN = 32  # characters: secrets.token_urlsafe(24) and longer


class SettingsError(DomainError):
    """A setting the service must not start with (the CLI prints it as one line; it names no secret)."""


def default_db_url() -> str:
    return f"sqlite:///{Path.cwd() / 'fbnet.db'}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FBNET_", extra="ignore")

    db_url: str = ""  # empty: a SQLite file ``fbnet.db`` in the working folder
    admin_token: SecretStr | None = None
    read_token: SecretStr | None = None  # when set, readers need it (or the admin or a device token)
    # Limits: a request body larger than this is refused (413) before anything parses it.
    max_body_bytes: int = Field(default=4 * MiB, ge=1024)
    # Worker threads per process (sync handlers, DB work); the connection pools are sized to match.
    threads: int = Field(default=16, ge=1, le=256)
    # SQLite: the page cache of each pooled connection (KiB). Bounded small on purpose: with two pools of
    # threads + overflow connections, SQLite's default (2000 KiB each) could hold ~80 MiB as the database
    # grows; in WAL mode another connection's commit empties a connection's cache anyway.
    sqlite_cache_kib: int = Field(default=256, ge=16)
    # Per op, a table takes the newest this many runs of its configuration that measured it (older runs
    # stay stored): a table miss reads a bounded number of rows however long a device has been profiled.
    table_runs: int = Field(default=16, ge=1, le=1000)
    # How long a request waits for a connection or a SQLite write lock before it answers 503.
    db_wait_s: float = Field(default=10.0, gt=0)
    # What a 503 tells the client to wait before it retries (Retry-After, seconds).
    retry_after_s: int = Field(default=2, ge=1)
    # Concurrent plot renderings per process (CPU-heavy; the table route must not starve behind them).
    plot_concurrency: int = Field(default=2, ge=1)
    # How long a plot request waits for a rendering slot before it answers 503 with Retry-After.
    plot_wait_s: float = Field(default=5.0, gt=0)
    # A page of a list (runs, measurements, validations, devices) ends early once its items' JSON
    # passes this many bytes (at least one item a page; ``next`` says more follow).
    page_bytes: int = Field(default=1 * MiB, ge=16 * 1024)
    # Transport (uvicorn): a connection must deliver a whole request head (request line and headers)
    # within this many seconds of opening, or of the first byte of its next request; else 408 and closed.
    header_timeout_s: float = Field(default=10.0, gt=0)
    # A request body must arrive within this many seconds of its head (408 otherwise).
    body_timeout_s: float = Field(default=30.0, gt=0)
    # Open connections per process (idle kept-alive ones count too); a request above it gets 503 and
    # its connection is closed (uvicorn's limit_concurrency).
    max_connections: int = Field(default=1000, ge=1)
    # The listening socket's queue of not-yet-accepted connections (listen(2) backlog).
    backlog: int = Field(default=1024, ge=1)
    # A kept-alive connection with no request in progress is closed after this many seconds.
    keep_alive_s: int = Field(default=5, ge=1)
    # Admission: requests handled at once per process; as many again wait, each at most admission_wait_s
    # for a slot; the rest are answered 503 + Retry-After at once (overload is refused, not queued).
    # Small on purpose: a process runs Python on one core, and with 16 or 32 requests at once their
    # worker threads starved the event loop that must refuse the excess (at 4x the sustainable rate the
    # answered requests' p99 went over 1 s; with 8, ~150 ms: bench/server_load.py --parts overload).
    max_inflight: int = Field(default=8, ge=1)
    admission_wait_s: float = Field(default=0.25, ge=0)

    # Failed tokens: after this many from one client address within auth_fail_window_s, its requests
    # with a token are answered 429 + Retry-After without a lookup until the window has passed.
    auth_fail_limit: int = Field(default=20, ge=1)
    auth_fail_window_s: float = Field(default=60.0, gt=0)

    # pydantic only wraps ValueError in its ValidationError (which would print the value it refused):
    # SettingsError passes through, one line, no secret in it
    @field_validator("admin_token", "read_token", mode="before")
    @classmethod
    def _empty_token_is_unset(cls, v):
        """``FBNET_READ_TOKEN=`` (docker-compose's ``${FBNET_READ_TOKEN:-}``) or blanks mean no token."""
        if isinstance(v, SecretStr):
            v = v.get_secret_value()
        if isinstance(v, str):
            v = v.strip()  # the header's token is read stripped too
            return v or None
        return v

    @field_validator("admin_token")
    @classmethod
    def _strong_admin_token(cls, v: SecretStr | None):
        if v is not None and len(v.get_secret_value()) < MIN_ADMIN_TOKEN:
            raise SettingsError(
                f"FBNET_ADMIN_TOKEN has {len(v.get_secret_value())} characters; it needs at least {MIN_ADMIN_TOKEN} "
                "(make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        return v

    def resolved_db_url(self) -> str:
        return self.db_url or default_db_url()
