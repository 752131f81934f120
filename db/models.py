"""SQLAlchemy models: devices, their tokens, spaces, profiling runs, measurements, imports, validations.

Latencies are stored in microseconds. Schema changes go through ``db/migrations`` only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import false as sa_false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# BigInteger on PostgreSQL, INTEGER PRIMARY KEY (rowid) on SQLite.
PK = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every engine (SQLite hands back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return None if value is None else value.astimezone(UTC)

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    platform: Mapped[str] = mapped_column(String(16))
    runtime: Mapped[str] = mapped_column(String(64))
    precision: Mapped[str] = mapped_column(String(16), default="fp32")
    model: Mapped[str | None] = mapped_column(String(128))
    soc: Mapped[str | None] = mapped_column(String(128))
    os: Mapped[str | None] = mapped_column(String(128))
    # "metadata" is reserved on declarative classes; the column keeps the API's name.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    # Bumped by every write that can change this device's tables; tables are cached per generation.
    table_gen: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    tokens: Mapped[list[DeviceToken]] = relationship(back_populates="device", cascade="all, delete-orphan")


class DeviceToken(Base):
    __tablename__ = "device_tokens"

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    device: Mapped[Device] = relationship(back_populates="tokens")


class Space(Base):
    __tablename__ = "spaces"

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    version: Mapped[str] = mapped_column(String(64))
    n_ops: Mapped[int] = mapped_column(Integer)
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    ops: Mapped[list[SpaceOp]] = relationship(back_populates="space", cascade="all, delete-orphan")


class SpaceOp(Base):
    __tablename__ = "space_ops"
    __table_args__ = (UniqueConstraint("space_id", "key", name="uq_space_ops_space_key"),)

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    space_id: Mapped[int] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(128))
    block: Mapped[str] = mapped_column(String(32))
    kernel: Mapped[int | None] = mapped_column(Integer)
    expansion: Mapped[int | None] = mapped_column(Integer)
    groups: Mapped[int | None] = mapped_column(Integer)
    cin: Mapped[int] = mapped_column(Integer)
    h: Mapped[int] = mapped_column(Integer)
    w: Mapped[int] = mapped_column(Integer)
    cout: Mapped[int] = mapped_column(Integer)
    stride: Mapped[int] = mapped_column(Integer)
    layers: Mapped[list[Any]] = mapped_column(JSON, default=list)

    space: Mapped[Space] = relationship(back_populates="ops")


class Run(Base):
    """One profiling run of one device over (part of) one space; imports are runs too."""

    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_device_space", "device_id", "space_id"),
        UniqueConstraint("device_id", "idempotency_key", name="uq_runs_device_idempotency_key"),
    )

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    space_id: Mapped[int] = mapped_column(ForeignKey("spaces.id"))
    space_version: Mapped[str] = mapped_column(String(64))
    transport: Mapped[str] = mapped_column(String(16))
    agent_version: Mapped[str] = mapped_column(String(64))
    runtime: Mapped[str] = mapped_column(String(64))
    runtime_version: Mapped[str] = mapped_column(String(64))
    # The configuration a run belongs to: precision, runtime, runtime_version, threads, cpu_mask,
    # compute_units (and transport 'import'); tables never mix configurations.
    precision: Mapped[str] = mapped_column(String(16), default="fp32", server_default="fp32")
    # reference ops drifted more than the agent's threshold: left out of tables unless asked for
    unstable: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    build: Mapped[str | None] = mapped_column(String(256))
    threads: Mapped[int | None] = mapped_column(Integer)
    cpu_mask: Mapped[str | None] = mapped_column(String(64))
    compute_units: Mapped[str | None] = mapped_column(String(32))
    host: Mapped[str | None] = mapped_column(String(256))
    device_model: Mapped[str | None] = mapped_column(String(128))
    soc: Mapped[str | None] = mapped_column(String(128))
    os: Mapped[str | None] = mapped_column(String(128))
    warmup: Mapped[int | None] = mapped_column(Integer)
    repeats: Mapped[int | None] = mapped_column(Integer)
    rounds: Mapped[int | None] = mapped_column(Integer)
    overhead_us: Mapped[float | None] = mapped_column(Float)
    context_factor: Mapped[float | None] = mapped_column(Float)
    context_us_per_mb: Mapped[float | None] = mapped_column(Float)
    temps_before: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    temps_after: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    cpu_freqs_before: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    cpu_freqs_after: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="open")
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # client-chosen: a retried POST /runs with the same key finds this run instead of opening another
    idempotency_key: Mapped[str | None] = mapped_column(String(64))

    device: Mapped[Device] = relationship()
    space: Mapped[Space] = relationship()


class Measurement(Base):
    """Robust statistics of one op in one run (microseconds); at most one row per (run, key)."""

    __tablename__ = "measurements"
    __table_args__ = (UniqueConstraint("run_id", "key", name="uq_measurements_run_key"),)

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(128))
    n: Mapped[int] = mapped_column(Integer)
    median_us: Mapped[float] = mapped_column(Float)
    mean_us: Mapped[float] = mapped_column(Float)
    std_us: Mapped[float] = mapped_column(Float)
    min_us: Mapped[float] = mapped_column(Float)
    p10_us: Mapped[float] = mapped_column(Float)
    p90_us: Mapped[float] = mapped_column(Float)
    samples_us: Mapped[list[Any] | None] = mapped_column(JSON)
    # the runtime's per-call overhead for this op's input shape, timed in the same rounds
    overhead_us: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class OpStat(Base):
    """The summary of one op in one FINISHED run, written when the run finishes (or is imported): what
    table assembly reads, so that a table never reads samples nor other configurations' runs."""

    __tablename__ = "op_stats"
    __table_args__ = (Index("ix_op_stats_config", "device_id", "space_id", "config_id"),)

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    space_id: Mapped[int] = mapped_column(ForeignKey("spaces.id"))
    config_id: Mapped[str] = mapped_column(String(32))  # fbnet.configuration.Configuration.config_id
    unstable: Mapped[bool] = mapped_column(Boolean)
    n: Mapped[int] = mapped_column(Integer)
    median_us: Mapped[float] = mapped_column(Float)
    # the run's median less the per-call overhead for this op's input shape (None: no overhead known)
    corrected_us: Mapped[float | None] = mapped_column(Float)
    std_us: Mapped[float] = mapped_column(Float)
    p10_us: Mapped[float] = mapped_column(Float)
    p90_us: Mapped[float] = mapped_column(Float)


class ConfigOp(Base):
    """How many finished stable / unstable runs of one configuration measured one op (coverage)."""

    __tablename__ = "config_ops"

    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    space_id: Mapped[int] = mapped_column(ForeignKey("spaces.id"), primary_key=True)
    config_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    n_stable: Mapped[int] = mapped_column(Integer)
    n_unstable: Mapped[int] = mapped_column(Integer)


class ImportedTable(Base):
    """Provenance of an external table; its values are the measurements of ``run_id``."""

    __tablename__ = "imported_tables"

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    space_id: Mapped[int] = mapped_column(ForeignKey("spaces.id"))
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    format: Mapped[str] = mapped_column(String(32))
    source: Mapped[str | None] = mapped_column(String(256))
    entries_in_file: Mapped[int] = mapped_column(Integer)
    mapped: Mapped[int] = mapped_column(Integer)
    unmapped: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Validation(Base):
    """A whole architecture measured on the device against the table's prediction."""

    __tablename__ = "validations"
    __table_args__ = (
        Index("ix_validations_device_space", "device_id", "space_id"),
        UniqueConstraint("device_id", "idempotency_key", name="uq_validations_device_idempotency_key"),
    )

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    space_id: Mapped[int] = mapped_column(ForeignKey("spaces.id"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    arch: Mapped[list[Any]] = mapped_column(JSON)
    predicted_us: Mapped[float] = mapped_column(Float)
    measured_us: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer)
    std_us: Mapped[float | None] = mapped_column(Float)
    table_version: Mapped[str | None] = mapped_column(String(64))
    label: Mapped[str | None] = mapped_column(String(128))
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # the client's Idempotency-Key: a retried POST /validations with the same key (and the same body,
    # whose SHA-256 is kept beside it) answers this row instead of storing the validation twice
    idempotency_key: Mapped[str | None] = mapped_column(String(64))
    request_sha256: Mapped[str | None] = mapped_column(String(64))


class PlanBatch(Base):
    """One batch of v2 grid ops the service issued for a device, space and configuration to measure:
    the first rounds a space-filling design, then adaptive rounds (``profiler_server.domain.planning``).
    The newest batch of a (device, space, configuration) is the current one until its ops are measured
    in finished runs (or reported as failed); asking again returns what is left of it."""

    __tablename__ = "plan_batches"
    __table_args__ = (
        Index("ix_plan_batches_config", "device_id", "space_id", "config_id"),
        UniqueConstraint("device_id", "space_id", "config_id", "round", name="uq_plan_batches_round"),
    )

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    space_id: Mapped[int] = mapped_column(ForeignKey("spaces.id"))
    config_id: Mapped[str] = mapped_column(String(32))
    configuration: Mapped[dict[str, Any]] = mapped_column(JSON)
    round: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(String(16))  # design | adaptive
    seed: Mapped[int] = mapped_column(Integer)
    keys: Mapped[list[Any]] = mapped_column(JSON)
    # ops the agent reported it could not measure: never issued again
    failed: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class GridFitRow(Base):
    """A fitted latency model's output over a v2 grid, keyed by the content hash of what it was fitted
    on (the measured entries, the space version, the model kind and revision): a restarted server
    reads it instead of refitting (``profiler_server.domain.grid.fit_grid``). ``predicted`` is the
    corrected us per grid op in grid order, little-endian float64, zlib-compressed; ``meta`` the
    held-out error, the vector widths and the families' sizes as JSON text (key order kept). The
    newest few rows per device, space and configuration are kept."""

    __tablename__ = "grid_fits"
    __table_args__ = (Index("ix_grid_fits_config", "device_id", "space_id", "config_id"),)

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    space_id: Mapped[int] = mapped_column(ForeignKey("spaces.id"))
    config_id: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(32))
    n_ops: Mapped[int] = mapped_column(Integer)
    predicted: Mapped[bytes] = mapped_column(LargeBinary)
    meta: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
