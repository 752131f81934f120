"""What the profile and validate flows share: where the ops run (a transport and its settings), which
ops and architectures to time, the export cache. Errors name the problem, never a command-line flag.
"""

from __future__ import annotations

import fnmatch
import os
import random
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class TransportName(StrEnum):
    host = "host"
    native = "native"
    adb = "adb"
    ios = "ios"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.environ.get("FBNET_AGENT_CACHE", Path(base) / "fbnet-agent" / "exports"))


@dataclass(frozen=True)
class Target:
    """Where and how the programs run: the transport and its settings (threads, CPU mask, adb/iOS)."""

    transport: TransportName = TransportName.host
    threads: int = 1
    cpu_mask: str | None = None
    serial: str | None = None
    runner: Path | None = None
    adb: str = "adb"
    udid: str | None = None
    bundle_id: str = "org.fbnetlut.CoreMLBench"
    compute_units: str = "cpu"
    xcrun: str = "xcrun"
    precision: str | None = None  # None: the runtime's own (ExecuTorch fp32, Core ML fp16)

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


def export_ops(space, fmt: str, cache_dir: Path, ops, jobs: int, *, show: bool = True) -> dict[str, Path]:
    """Export ``ops`` and their per-shape overhead programs into the cache (cached files are reused)."""
    from device_agents.exporters import cache_path, export_space, overhead_key
    from fbnet.progress import progress

    shapes = {op.input_shape for op in ops}
    n_prog = len(ops) + len(shapes)
    cold = sum(not cache_path(op.key, fmt, cache_dir).exists() for op in ops) + sum(
        not cache_path(overhead_key(s), fmt, cache_dir).exists() for s in shapes)
    with progress(enabled=show) as prog:
        task = prog.add_task("export", total=n_prog, info=f"{cold} to export, {n_prog - cold} cached")
        return export_space(space, fmt, cache_dir, ops=ops, jobs=jobs, overheads=True,
                            progress=lambda key, path, cached: prog.update(task, advance=1, info=key))
