"""Ops and whole architectures to ExecuTorch (.pte, XNNPACK, fp32) and Core ML (.mlpackage, fp16).

Modules come only from :mod:`search.blocks` (the registry the supernet trains), in eval mode.
Single-op exports are cached on disk by op key plus a fingerprint of the exporter, the libraries
and the block definitions, so a second profile of the same space exports nothing.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import multiprocessing as mp
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from functools import cache
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn

from search import blocks
from search.space import Arch, Op, Space

# executorch pulls in torchao, which logs a warning per CUDA kernel library it cannot load on a
# CPU-only machine, and torch's pytree a deprecation per process: noise in every export.
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

# Bump whenever what an export produces changes in a way the library versions do not capture.
EXPORTER_VERSION = "1"
FORMATS = ("pte", "mlpackage")
SUFFIX = {"pte": ".pte", "mlpackage": ".mlpackage"}
WEIGHT_SEED = 0


class ExportError(RuntimeError):
    """An op or model that could not be exported."""


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")


@cache
def library_versions() -> dict[str, str]:
    return {"torch": version("torch"), "executorch": version("executorch"), "coremltools": version("coremltools")}


@cache
def fingerprint(fmt: str) -> str:
    """Short hash of everything besides the op key that decides the exported file."""
    _check_format(fmt)
    lib = "executorch" if fmt == "pte" else "coremltools"
    v = library_versions()
    blob = "|".join([fmt, EXPORTER_VERSION, v["torch"], v[lib], inspect.getsource(blocks)])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))


def export_pte(module: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """torch.export + XNNPACK lowering (fp32) to an ExecuTorch program at ``path``."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    path = Path(path)
    module = module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.13's own pytree deprecation, raised inside executorch's lowering: not ours to fix
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        ep = torch.export.export(module, (example,), strict=False)
        prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    tmp = _atomic_target(path)
    try:
        (tmp / "p.pte").write_bytes(prog.buffer)
        os.replace(tmp / "p.pte", path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def export_mlpackage(module: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """jit.trace + Core ML mlprogram (iOS 17, fp16 compute, fp16 input and output) at ``path``."""
    import coremltools as ct
    import numpy as np

    path = Path(path)
    module = module.eval()
    with torch.no_grad():
        traced = torch.jit.trace(module, (example,))
    mlmodel = ct.convert(
        traced,
        inputs=[ct.TensorType(name="x", shape=tuple(example.shape), dtype=np.float16)],
        outputs=[ct.TensorType(name="y", dtype=np.float16)],
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS17,
        compute_precision=ct.precision.FLOAT16,
    )
    tmp = _atomic_target(path)
    try:
        mlmodel.save(str(tmp / "m.mlpackage"))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp / "m.mlpackage", path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def export_module(module: nn.Module, example: torch.Tensor, fmt: str, path: str | Path) -> Path:
    _check_format(fmt)
    fn = export_pte if fmt == "pte" else export_mlpackage
    return fn(module, example, path)


def op_module(op: Op) -> nn.Module:
    """The op's module from the registry, with deterministic weights, in eval mode."""
    if op.is_identity:
        raise ExportError(f"{op.key} is an identity skip: nothing runs, its cost is zero by construction")
    with torch.random.fork_rng():
        torch.manual_seed(WEIGHT_SEED)
        m = blocks.build_op(op)
        blocks.init_weights(m)
    return m.eval()


class CallOverhead(nn.Module):
    """The cheapest real program for an input shape: measures the runtime's per-call overhead."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1.0


def cache_path(key: str, fmt: str, cache_dir: str | Path) -> Path:
    return Path(cache_dir) / f"{fmt}-{fingerprint(fmt)}" / f"{key}{SUFFIX[fmt]}"


def overhead_key(shape: Iterable[int]) -> str:
    return "overhead-" + "x".join(str(d) for d in shape)


def export_overhead(shape: tuple[int, ...], fmt: str, cache_dir: str | Path) -> Path:
    """The identity-like program of ``shape`` (cached like an op)."""
    path = cache_path(overhead_key(shape), fmt, cache_dir)
    if not path.exists():
        export_module(CallOverhead().eval(), torch.zeros(shape), fmt, path)
    return path


def export_op(op: Op, fmt: str, cache_dir: str | Path) -> Path:
    """The op's program, exported once per (key, fingerprint) and then served from ``cache_dir``."""
    path = cache_path(op.key, fmt, cache_dir)
    if path.exists():
        return path
    try:
        return export_module(op_module(op), blocks.example_input(op), fmt, path)
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
        from search.space import get_space

        return key, str(export_arch(get_space(space_name), Arch.parse(arch_text), fmt, target))
    return overhead_key(payload), str(export_overhead(payload, fmt, target))


def _run_jobs(cold: list[tuple], jobs: int, done: dict[str, Path],
              progress: Callable[[str, Path, bool], None] | None) -> dict[str, Path]:
    """Run export jobs, in ``jobs`` spawned worker processes (one torch thread each) when > 1."""
    if jobs <= 1 or len(cold) <= 1:
        for job in cold:
            key, p = _export_task(job)
            done[key] = Path(p)
            if progress:
                progress(key, Path(p), False)
        return done
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(cold)), mp_context=ctx, initializer=_worker_init) as pool:
        futures = [pool.submit(_export_task, job) for job in cold]
        try:
            for fut in as_completed(futures):
                key, p = fut.result()
                done[key] = Path(p)
                if progress:
                    progress(key, Path(p), False)
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
) -> dict[str, Path]:
    """Export the space's ops (or ``ops``) into the cache ``out_dir``; key -> path.

    Identity skips are left out. Ops already in the cache cost nothing; the rest are exported by
    ``jobs`` worker processes (spawned, one torch thread each). With ``overheads`` the identity-like
    programs of every input shape come too, under ``overhead-<shape>`` keys. ``progress(key, path,
    cached)`` is called once per program.
    """
    _check_format(fmt)
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
    return _run_jobs(cold, jobs, done, progress)


def arch_example(space: Space) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, space.in_channels, space.resolution, space.resolution, generator=g)


def export_arch(space: Space, arch: Arch, fmt: str, path: str | Path, state_dict: dict | None = None) -> Path:
    """A whole architecture (``search.blocks.FBNet``) to one program at ``path``."""
    _check_format(fmt)
    with torch.random.fork_rng():
        torch.manual_seed(WEIGHT_SEED)
        model = blocks.FBNet(space, arch)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    try:
        return export_module(model.eval(), arch_example(space), fmt, path)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"export of {arch.to_text()} to {fmt} failed: {type(e).__name__}: {e}") from e


def export_archs(space: Space, archs: dict[str, tuple[Arch, Path]], fmt: str, jobs: int = 2,
                 progress: Callable[[str, Path, bool], None] | None = None) -> dict[str, Path]:
    """Export whole architectures (``key -> (arch, path)``) that are not on disk yet, ``jobs`` at a
    time; key -> path. Fresh deterministic weights, as :func:`export_arch`."""
    _check_format(fmt)
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


__all__ = [
    "EXPORTER_VERSION", "FORMATS", "CallOverhead", "ExportError", "arch_example", "cache_path", "export_arch",
    "export_archs", "export_mlpackage", "export_module", "export_op", "export_overhead", "export_pte", "export_space",
    "fingerprint", "library_versions", "op_module", "overhead_key",
]
