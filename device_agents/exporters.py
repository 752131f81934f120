"""The agents' export cache and worker pool, on top of :mod:`fbnet.export`.

Single-op exports are cached on disk by op key plus :func:`fbnet.export.fingerprint` (the
exporter, the libraries and the block definitions), so a second profile of the same space exports
nothing. Cold exports run in spawned worker processes, one torch thread each.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path

import torch

from fbnet import blocks
from fbnet.export import (
    FORMATS,
    SUFFIX,
    CallOverhead,
    ExportError,
    check_format,
    export_arch,
    export_module,
    fingerprint,
    library_versions,
    op_module,
)
from fbnet.space import Arch, Op, Space


def cache_path(key: str, fmt: str, cache_dir: str | Path) -> Path:
    return Path(cache_dir) / f"{fmt}-{fingerprint(fmt)}" / f"{key}{SUFFIX[fmt]}"


def overhead_key(shape: Iterable[int]) -> str:
    return "overhead-" + "x".join(str(d) for d in shape)


def export_overhead(shape: tuple[int, ...], fmt: str, cache_dir: str | Path) -> Path:
    """The identity-like program of ``shape`` (cached like an op)."""
    path = cache_path(overhead_key(shape), fmt, cache_dir)
    if not path.exists():
        export_module(CallOverhead().eval(), blocks.example_input(shape), fmt, path)
    return path


def export_op(op: Op, fmt: str, cache_dir: str | Path) -> Path:
    """The op's program, exported once per (key, fingerprint) and then served from ``cache_dir``."""
    path = cache_path(op.key, fmt, cache_dir)
    if path.exists():
        return path
    try:
        return export_module(op_module(op), blocks.example_input(op.input_shape), fmt, path)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - one clear line per failed op
        raise ExportError(f"export of {op.key} to {fmt} failed: {type(e).__name__}: {e}") from e


def _worker_init() -> None:
    import warnings

    # One thread per worker: two workers on two cores, no oversubscription.
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")


def _export_task(job: tuple) -> tuple[str, str]:
    kind, payload, fmt, target = job
    if kind == "op":
        return payload.key, str(export_op(payload, fmt, target))
    if kind == "arch":
        key, space_name, arch_text = payload
        from fbnet.arch_v2 import ArchV2
        from fbnet.space_v2 import is_v2_space, lookup_space

        arch = ArchV2.parse(arch_text) if is_v2_space(space_name) else Arch.parse(arch_text)
        return key, str(export_arch(lookup_space(space_name), arch, fmt, target))
    if kind == "prefix":
        key, space_name, arch_text, k = payload
        from fbnet.space import get_space

        return key, str(export_prefix(get_space(space_name), Arch.parse(arch_text), k, fmt, target))
    return overhead_key(payload), str(export_overhead(payload, fmt, target))


def _job_key(job: tuple) -> str:
    kind, payload = job[0], job[1]
    if kind == "op":
        return payload.key
    return payload[0] if kind in ("arch", "prefix") else overhead_key(payload)


def _done(key: str, path: str, done: dict[str, Path], progress) -> None:
    done[key] = Path(path)
    if progress:
        progress(key, Path(path), False)


_POOL: dict[int, ProcessPoolExecutor] = {}  # jobs -> the pool a ``worker_pool`` block keeps


@contextmanager
def worker_pool(jobs: int) -> Iterator[None]:
    """Keep ``jobs`` spawned export workers alive for the block: every export call inside it reuses them,
    so torch, executorch and the lowering's first-call cost are paid once, not once per call (a sampled
    profile exports a batch per round)."""
    if jobs <= 1 or jobs in _POOL:
        yield
        return
    _POOL[jobs] = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init)
    try:
        yield
    finally:
        _POOL.pop(jobs).shutdown(cancel_futures=True)


def _run_jobs(cold: list[tuple], jobs: int, done: dict[str, Path],
              progress: Callable[[str, Path, bool], None] | None,
              failed: dict[str, str] | None = None) -> dict[str, Path]:
    """Run export jobs, in ``jobs`` spawned worker processes (one torch thread each) when > 1 (those of
    an open :func:`worker_pool` when there is one). With ``failed`` given, a job's :class:`ExportError` is
    recorded there (key -> message) and the rest go on; without, it is raised."""
    if jobs <= 1 or (len(cold) <= 1 and jobs not in _POOL):
        for job in cold:
            try:
                _done(*_export_task(job), done, progress)
            except ExportError as e:
                if failed is None:
                    raise
                failed[_job_key(job)] = str(e)
        return done
    if jobs in _POOL:
        return _pool_jobs(_POOL[jobs], cold, done, progress, failed)
    with ProcessPoolExecutor(max_workers=min(jobs, len(cold)), mp_context=mp.get_context("spawn"),
                             initializer=_worker_init) as pool:
        return _pool_jobs(pool, cold, done, progress, failed)


def _pool_jobs(pool: ProcessPoolExecutor, cold: list[tuple], done: dict[str, Path],
               progress: Callable[[str, Path, bool], None] | None, failed: dict[str, str] | None) -> dict[str, Path]:
    futures = {pool.submit(_export_task, job): _job_key(job) for job in cold}
    try:
        for fut in as_completed(futures):
            try:
                _done(*fut.result(), done, progress)
            except ExportError as e:
                if failed is None:
                    raise
                failed[futures[fut]] = str(e)
    except BrokenProcessPool as e:
        raise ExportError(f"an export worker died ({e}); out of memory? retry with --jobs 1") from e
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    return done


def export_space(
    space: Space,
    fmt: str,
    out_dir: str | Path,
    ops: Iterable[Op] | None = None,
    jobs: int = 2,
    overheads: bool = False,
    progress: Callable[[str, Path, bool], None] | None = None,
    failed: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Export the space's ops (or ``ops``) into the cache ``out_dir``; key -> path.

    Identity skips are left out. Ops already in the cache cost nothing; the rest are exported by
    ``jobs`` worker processes (spawned, one torch thread each). With ``overheads`` the identity-like
    programs of every input shape come too, under ``overhead-<shape>`` keys. ``progress(key, path,
    cached)`` is called once per program. With ``failed`` (a dict), ops that fail to export are recorded
    there (key -> message) instead of raising. Works for v1 ops and v2 ops (:class:`fbnet.ops_v2.OpV2`)
    alike: the cache is keyed by the op key, which is the op's configuration.
    """
    check_format(fmt)
    ops = [op for op in (space.ops if ops is None else ops) if not op.is_identity]
    todo: list[tuple] = [("op", op, fmt, str(out_dir)) for op in ops]
    if overheads:
        todo += [("overhead", s, fmt, str(out_dir)) for s in dict.fromkeys(op.input_shape for op in ops)]
    done: dict[str, Path] = {}
    cold = []
    for job in todo:
        key = job[1].key if job[0] == "op" else overhead_key(job[1])
        path = cache_path(key, fmt, out_dir)
        if path.exists():
            done[key] = path
            if progress:
                progress(key, path, True)
        else:
            cold.append(job)
    return _run_jobs(cold, jobs, done, progress, failed)


def export_archs(space: Space, archs: dict[str, tuple[Arch, Path]], fmt: str, jobs: int = 2,
                 progress: Callable[[str, Path, bool], None] | None = None) -> dict[str, Path]:
    """Export whole architectures (``key -> (arch, path)``) that are not on disk yet, ``jobs`` at a
    time; key -> path. Fresh deterministic weights, as :func:`export_arch`."""
    check_format(fmt)
    done: dict[str, Path] = {}
    cold = []
    for key, (arch, path) in archs.items():
        if Path(path).exists():
            done[key] = Path(path)
            if progress:
                progress(key, Path(path), True)
        else:
            cold.append(("arch", (key, space.name, arch.to_text()), fmt, str(path)))
    return _run_jobs(cold, jobs, done, progress)


class Prefix(torch.nn.Module):
    """The first ``k`` layers of a whole architecture, after its stem (``k = 0``: the stem alone),
    with the whole model's weights: timing every ``k`` in the same rounds gives each layer's cost
    inside the network as ``t(k + 1) - t(k)``."""

    def __init__(self, model: blocks.FBNet, k: int):
        super().__init__()
        self.stem = model.stem
        self.layers = torch.nn.Sequential(*list(model.layers)[:k])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))


def export_prefix(space: Space, arch: Arch, k: int, fmt: str, path: str | Path) -> Path:
    """Stem + the first ``k`` layers of ``arch`` (weights as :func:`fbnet.export.export_arch` makes them)."""
    from fbnet.export import WEIGHT_SEED, export_module

    with torch.random.fork_rng():
        torch.manual_seed(WEIGHT_SEED)
        model = blocks.FBNet(space, arch)
    try:
        return export_module(Prefix(model, k).eval(), blocks.example_input(space.input_shape), fmt, path)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"export of the first {k} layers of {arch.to_text()} failed: {type(e).__name__}: {e}") from e


def export_prefixes(space: Space, prefixes: dict[str, tuple[Arch, int, Path]], fmt: str, jobs: int = 2,
                    progress: Callable[[str, Path, bool], None] | None = None) -> dict[str, Path]:
    """Export prefix models (``key -> (arch, k, path)``) not on disk yet, ``jobs`` at a time."""
    check_format(fmt)
    done: dict[str, Path] = {}
    cold = []
    for key, (arch, k, path) in prefixes.items():
        if Path(path).exists():
            done[key] = Path(path)
            if progress:
                progress(key, Path(path), True)
        else:
            cold.append(("prefix", (key, space.name, arch.to_text(), k), fmt, str(path)))
    return _run_jobs(cold, jobs, done, progress)


__all__ = [
    "FORMATS", "CallOverhead", "ExportError", "Prefix", "cache_path", "worker_pool", "export_arch", "export_archs", "export_op",
    "export_overhead", "export_prefix", "export_prefixes", "export_space", "fingerprint", "library_versions", "op_module", "overhead_key",
]
