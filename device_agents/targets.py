"""What the profile and validate flows share: the service account they report to, where the ops run
(a transport and its settings), the export cache, which ops and architectures to time, and the
progress factory they take. Each setting is declared once, as a field of a typed config whose
description is its option's help. Errors name the problem, never a command-line flag.
"""

from __future__ import annotations

import fnmatch
import os
import random
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from enum import StrEnum
from functools import partial
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fbnet.configuration import ComputeUnits, Precision
from fbnet.options import cli
from fbnet.progress import progress, ticker

# The progress factory a flow takes (``fbnet.progress.progress``'s shape); the library's default is silent.
ProgressFactory = Callable[[], AbstractContextManager]
SILENT: ProgressFactory = partial(progress, enabled=False)
TRANSPORT_PANEL = "Transport settings (native, adb, ios)"


class TransportName(StrEnum):
    host = "host"
    native = "native"
    adb = "adb"
    ios = "ios"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.environ.get("FBNET_AGENT_CACHE", Path(base) / "fbnet-agent" / "exports"))


@contextmanager
def steps(make: ProgressFactory, label: str, total: int, info: str = "") -> Iterator[Callable[..., None]]:
    """One bar of the progress factory ``make``; yields a callback ``(key, *_)`` that advances it by one
    step (the total grows when a step repeats: re-measurements)."""
    with make() as prog:
        yield ticker(prog, prog.add_task(label, total=total, info=info))


class Service(BaseModel):
    """The device's account on the profiler service."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    server: str = Field(description="profiler service URL (required)", json_schema_extra=cli(envvar="FBNET_SERVER"))
    device: str = Field(description="device name registered on the service (required)")
    token: str = Field(repr=False, description="the device's agent token (required)",
                       json_schema_extra=cli(envvar="FBNET_AGENT_TOKEN"))
    retries: int = Field(3, ge=0, description="retries per request (exponential backoff) before spooling")


class Exports(BaseModel):
    """Which space's programs, where they are cached, how many processes export them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    space: str = Field("fbnet-cifar", description="fbnet-224, fbnet-cifar, fbnet-<res>[-w<width>], fbnetv2-224 or fbnetv2-cifar")
    cache_dir: Path | None = Field(None, description="export cache (default: $FBNET_AGENT_CACHE, else "
                                   "~/.cache/fbnet-agent/exports)")
    jobs: int = Field(2, ge=1, description="export worker processes for cold exports")

    @property
    def cache(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()


def _transport_opt(**kw) -> dict:
    return cli(panel=TRANSPORT_PANEL, **kw)


class Target(BaseModel):
    """Where and how the programs run: the transport and its settings (threads, CPU mask, adb/iOS)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transport: TransportName = Field(TransportName.host, description=(
        "where the ops run: host (this process), native (fbnet-runner on this machine), adb (an Android "
        "phone), ios (an iPhone)"))
    threads: int = Field(1, ge=1, description="runtime threads (host, native and adb)")
    cpu_mask: str | None = Field(None, max_length=64, description="hex CPU mask (taskset), e.g. 80 = cpu7, "
                                 "f0 = cpu4-7")
    precision: Precision | None = Field(None, description=(
        "fp32 or int8 (ExecuTorch: PT2E, XNNPACK quantizer, per-channel weights, static activations), fp16 "
        "(Core ML) (default: the runtime's own: fp32, Core ML fp16)"))
    serial: str | None = Field(None, description="adb: device serial (adb -s)", json_schema_extra=_transport_opt())
    runner: Path | None = Field(None, description=(
        "adb: fbnet-runner or upstream executor_runner built for the phone (android/build_runner.sh); "
        "native: fbnet-runner (default: $FBNET_RUNNER, else build/runner/fbnet-runner from `make runner`)"),
        json_schema_extra=_transport_opt())
    adb: str = Field("adb", description="adb: the adb executable", json_schema_extra=_transport_opt())
    udid: str | None = Field(None, description="ios: the iPhone's UDID / CoreDevice id",
                             json_schema_extra=_transport_opt())
    bundle_id: str = Field("org.fbnetlut.CoreMLBench", description="ios: bundle id of the CoreMLBench app",
                           json_schema_extra=_transport_opt())
    compute_units: ComputeUnits = Field("cpu", description="ios: Core ML compute units",
                                        json_schema_extra=_transport_opt())
    xcrun: str = Field("xcrun", description="ios: the xcrun executable", json_schema_extra=_transport_opt())

    @property
    def fmt(self) -> str:
        """The export format: ``pte`` / ``pte-int8`` (ExecuTorch) or ``mlpackage`` (Core ML, fp16)."""
        from fbnet.export import export_format

        return export_format("mlpackage" if self.transport is TransportName.ios else "pte", self.precision)

    @property
    def run_precision(self) -> str:
        """The precision the programs of this target run in (what the run records)."""
        from fbnet.export import PRECISION

        return PRECISION[self.fmt]

    @property
    def setting(self) -> str:
        where = f"{self.compute_units} compute units" if self.transport is TransportName.ios else f"{self.threads} thread(s)"
        return f"{self.run_precision}, {where}"

    def open(self, work_dir: Path):
        """A fresh transport for this target (raises ValueError / AgentError when it cannot run)."""
        if self.transport is TransportName.host:
            from device_agents.transports.host import HostTransport

            return HostTransport(threads=self.threads, cpu_mask=self.cpu_mask)
        if self.transport is TransportName.native:
            from device_agents.transports.native import NativeTransport

            return NativeTransport(runner=self.runner, threads=self.threads, cpu_mask=self.cpu_mask)
        if self.transport is TransportName.adb:
            from device_agents.transports.adb import AdbTransport

            if self.runner is None:
                raise ValueError("the adb transport needs a runner binary built for the phone "
                                 "(device_agents/android/build_runner.sh)")
            return AdbTransport(runner=self.runner, serial=self.serial, adb=self.adb, threads=self.threads,
                                cpu_mask=self.cpu_mask)
        from device_agents.transports.ios import IosTransport

        if not self.udid:
            raise ValueError("the ios transport needs the iPhone's UDID (see `xcrun devicectl list devices`)")
        return IosTransport(udid=self.udid, bundle_id=self.bundle_id, compute_units=self.compute_units,
                            xcrun=self.xcrun, work_dir=work_dir)


def select_ops(space, ops: str | None, limit: int | None):
    """Non-identity ops of the space, filtered by comma-separated keys/globs, then limited."""
    from fbnet.space import Op

    all_ops: list[Op] = [op for op in space.ops if not op.is_identity]
    if ops:
        chosen: dict[str, Op] = {}
        for pat in (p.strip() for p in ops.split(",") if p.strip()):
            if any(c in pat for c in "*?["):
                hits = [op for op in all_ops if fnmatch.fnmatchcase(op.key, pat)]
                if not hits:
                    raise ValueError(f"op pattern {pat!r} matches no op of {space.name}")
            else:
                if pat not in space.op_by_key:
                    raise ValueError(f"{pat!r} is not an op of {space.name} (see `fbnet-search ops`)")
                if space.op_by_key[pat].is_identity:
                    raise ValueError(f"{pat!r} is an identity skip; it costs 0 by construction")
                hits = [space.op_by_key[pat]]
            for op in hits:
                chosen.setdefault(op.key, op)
        all_ops = [op for op in all_ops if op.key in chosen]
    return all_ops[:limit] if limit else all_ops


def random_archs(n: int, seed: int):
    from fbnet.space import CANDIDATE_NAMES, NUM_LAYERS, Arch

    rng = random.Random(seed)
    return [Arch(tuple(rng.choice(CANDIDATE_NAMES) for _ in range(NUM_LAYERS))) for _ in range(n)]


def calibration_archs(n: int, seed: int):
    """The profile run's whole calibration models: random architectures from their own stream (never
    the ones ``validate --seed S`` draws, so a validation of random models is held out)."""
    from fbnet.space import CANDIDATE_NAMES, NUM_LAYERS, Arch

    rng = random.Random(f"calibration-{seed}")
    return [Arch(tuple(rng.choice(CANDIDATE_NAMES) for _ in range(NUM_LAYERS))) for _ in range(n)]


def arch_key(arch) -> str:
    """A whole model's program key (and cache file name): a hash of the architecture's text."""
    import hashlib

    return "arch-" + hashlib.sha256(arch.to_text().encode()).hexdigest()[:12]


def arch_folder(cache_dir: Path, fmt: str, space) -> Path:
    """Where whole-model programs of ``space`` in ``fmt`` are cached (beside the op programs)."""
    from device_agents.exporters import fingerprint

    return Path(cache_dir) / f"arch-{fmt}-{fingerprint(fmt)}" / space.name


def reference_ops(space, archs, n: int) -> list:
    """Up to ``n`` ops the architectures use, spread evenly over their sorted keys (identity skips excluded)."""
    keys = sorted({op.key for a in archs for op in space.arch_ops(a)})
    if n <= 0 or not keys:
        return []
    step = max(1, len(keys) // n)
    return [space.op_by_key[k] for k in keys[::step][:n]]


def export_ops(space, fmt: str, cache_dir: Path, ops, jobs: int, *,
               progress: ProgressFactory = SILENT, failed: dict[str, str] | None = None) -> dict[str, Path]:
    """Export ``ops`` and their per-shape overhead programs into the cache (cached files are reused);
    with ``failed`` (a dict) an op that fails to export is recorded there instead of raising."""
    from device_agents.exporters import cache_path, export_space, overhead_key

    shapes = {op.input_shape for op in ops}
    n_prog = len(ops) + len(shapes)
    cold = sum(not cache_path(op.key, fmt, cache_dir).exists() for op in ops) + sum(
        not cache_path(overhead_key(s), fmt, cache_dir).exists() for s in shapes)
    with steps(progress, "export", n_prog, f"{cold} to export, {n_prog - cold} cached") as tick:
        return export_space(space, fmt, cache_dir, ops=ops, jobs=jobs, overheads=True, progress=tick, failed=failed)
