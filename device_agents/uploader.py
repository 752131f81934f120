"""Upload to the profiler service through :class:`fbnet.client.ServiceClient` (the agent's token,
retries with backoff and Retry-After), and a spool on disk.

Every run the agent opens has a state file in the spool folder; measurements are written there
before they are sent, so nothing measured is lost when the service is down or the agent dies. The
next call of the agent (or ``fbnet-agent upload``) sends what is left. The same file is what
``--resume`` continues.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fbnet.client import MAX_RETRY_AFTER_S, RetryPolicy, ServiceClient, ServiceDown, ServiceRefused, retry_after_s
from fbnet.io import atomic_write
from fbnet.wire import (
    Measurement,
    MeasurementBatch,
    RunCreate,
    RunFinish,
    RunOut,
    ValidationCreate,
    ValidationOut,
)

BATCH = 16
UploadError = ServiceRefused  # the service refused a request (4xx): the name the agent's callers know


def default_spool_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fbnet-agent" / "spool"


@dataclass
class RunState:
    """One run as the agent knows it; persisted as JSON in the spool folder."""

    local_id: str
    server: str
    device: str
    space: str
    transport: str
    run_create: dict
    run_id: int | None = None
    uploaded: list[str] = field(default_factory=list)
    pending: list[dict] = field(default_factory=list)
    finish: dict | None = None
    path: str = ""

    @property
    def measured(self) -> set[str]:
        return set(self.uploaded) | {m["key"] for m in self.pending}

    def save(self) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "path"}
        atomic_write(self.path, json.dumps(data, indent=1, default=str))

    @classmethod
    def load(cls, path: Path) -> RunState:
        return cls(**json.loads(path.read_text()), path=str(path))


class Uploader:
    def __init__(self, server: str, token: str, device: str, spool_dir: str | Path | None = None,
                 retries: int = 3, backoff_s: float = 0.5, timeout_s: float = 15.0):
        self.server = server.rstrip("/")
        self.device = device
        self.spool_dir = Path(spool_dir) if spool_dir else default_spool_dir()
        self.service = ServiceClient(self.server, token, role="agent", timeout_s=timeout_s,
                                     retry=RetryPolicy(retries=retries, backoff_s=backoff_s))


    @classmethod
    def for_service(cls, service, spool_dir: str | Path | None = None) -> Uploader:
        """The uploader of a :class:`device_agents.targets.Service` (its server, token, device, retries)."""
        return cls(service.server, service.token, service.device, spool_dir, retries=service.retries)

    def close(self) -> None:
        self.service.close()

    def post_validation(self, v: ValidationCreate, idempotency_key: str | None = None) -> ValidationOut:
        """Upload one validation under one ``Idempotency-Key`` (new unless given) that every retry of the
        service client repeats: a POST retried after a timeout is stored once."""
        return self.service.post_validation(v, idempotency_key or uuid.uuid4().hex)

    # -- runs -----------------------------------------------------------------------------
    def _dir(self) -> Path:
        return self.spool_dir / self.device

    def states(self) -> list[RunState]:
        out = []
        for p in sorted(self._dir().glob("*.json"), key=lambda p: p.stat().st_mtime):
            try:
                st = RunState.load(p)
            except (ValueError, TypeError, OSError):
                continue
            if st.server.rstrip("/") == self.server:
                out.append(st)
        return out

    def resumable(self, space: str, transport: str, precision: str | None = None) -> RunState | None:
        """The newest unfinished run of ``space`` on ``transport`` (and in ``precision``, when given)."""
        cands = [s for s in self.states() if s.space == space and s.transport == transport and s.finish is None
                 and (precision is None or (s.run_create.get("precision") or "fp32") == precision)]
        return cands[-1] if cands else None

    def new_run(self, run: RunCreate) -> RunState:
        lid = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        # the key is spooled with the request: a POST retried after a timeout or a crash (of the
        # agent or the service) finds the run it opened instead of leaving an empty one behind
        run = run.model_copy(update={"idempotency_key": run.idempotency_key or uuid.uuid4().hex})
        st = RunState(lid, self.server, self.device, run.space, run.transport,
                      run.model_dump(mode="json"), path=str(self._dir() / f"{lid}.json"))
        st.save()
        try:
            self._open(st)
        except ServiceDown:
            pass  # measured anyway; the run opens on a later call
        return st

    def _open(self, st: RunState) -> None:
        if st.run_id is None:
            st.run_id = self.service.create_run(st.run_create).id
            st.save()

    def add(self, st: RunState, ms: list[Measurement], flush: bool = False) -> None:
        """Spool ``ms`` and send when a batch is full (or ``flush``); a down service only delays."""
        st.pending.extend(m.model_dump(mode="json") for m in ms)
        st.save()
        if flush or len(st.pending) >= BATCH:
            try:
                self.send(st)
            except ServiceDown:
                pass

    def send(self, st: RunState) -> None:
        """Open the run if needed and post every pending measurement. Raises ServiceDown/ServiceRefused."""
        self._open(st)
        while st.pending:
            chunk = st.pending[:BATCH]
            batch = MeasurementBatch(measurements=[Measurement.model_validate(m) for m in chunk])
            self.service.post_measurements(st.run_id, batch)
            st.uploaded.extend(m["key"] for m in chunk)
            del st.pending[: len(chunk)]
            st.save()

    def finish(self, st: RunState, fin: RunFinish) -> RunOut:
        st.finish = fin.model_dump(mode="json")
        st.save()
        return self._complete(st)

    def _complete(self, st: RunState) -> RunOut:
        self.send(st)
        out = self.service.finish_run(st.run_id, st.finish)
        Path(st.path).unlink(missing_ok=True)
        return out

    def flush_spool(self, exclude: str | None = None) -> list[str]:
        """Send what earlier calls left in the spool; returns one line per run touched."""
        lines = []
        for st in self.states():
            if st.local_id == exclude or (not st.pending and st.finish is None and st.run_id is not None):
                continue
            n = len(st.pending)
            if st.finish is not None:
                out = self._complete(st)
                lines.append(f"uploaded {n} spooled measurement(s) and closed run {out.id} ({st.space})")
            else:
                self.send(st)
                lines.append(f"uploaded {n} spooled measurement(s) to open run {st.run_id} ({st.space})")
        return lines


__all__ = ["BATCH", "MAX_RETRY_AFTER_S", "RunState", "ServiceDown", "UploadError", "Uploader", "default_spool_dir",
           "retry_after_s"]
