"""A module -> an ExecuTorch program (.pte, XNNPACK, fp32) or a Core ML package (.mlpackage, fp16).

Modules come only from :mod:`fbnet.blocks` (the registry the supernet trains), in eval mode, so
the agents time and the search exports exactly what the supernet trains. The agents' export
cache and worker pool live in ``device_agents.exporters``; :func:`fingerprint` is what names a
cache generation.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import shutil
import warnings
from functools import cache
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn

from fbnet import blocks
from fbnet.io import atomic_target
from fbnet.space import Arch, Op, Space

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


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")


@cache
def library_versions() -> dict[str, str]:
    return {"torch": version("torch"), "executorch": version("executorch"), "coremltools": version("coremltools")}


@cache
def fingerprint(fmt: str) -> str:
    """Short hash of everything besides the op key that decides the exported file."""
    check_format(fmt)
    lib = "executorch" if fmt == "pte" else "coremltools"
    v = library_versions()
    blob = "|".join([fmt, EXPORTER_VERSION, v["torch"], v[lib], inspect.getsource(blocks)])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


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
    tmp = atomic_target(path)
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
    tmp = atomic_target(path)
    try:
        mlmodel.save(str(tmp / "m.mlpackage"))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp / "m.mlpackage", path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def export_module(module: nn.Module, example: torch.Tensor, fmt: str, path: str | Path) -> Path:
    check_format(fmt)
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


def export_arch(space: Space, arch: Arch, fmt: str, path: str | Path, state_dict: dict | None = None) -> Path:
    """A whole architecture (``fbnet.blocks.FBNet``) to one program at ``path``."""
    check_format(fmt)
    with torch.random.fork_rng():
        torch.manual_seed(WEIGHT_SEED)
        model = blocks.FBNet(space, arch)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    try:
        return export_module(model.eval(), blocks.example_input(space.input_shape), fmt, path)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"export of {arch.to_text()} to {fmt} failed: {type(e).__name__}: {e}") from e


__all__ = [
    "EXPORTER_VERSION", "FORMATS", "SUFFIX", "CallOverhead", "ExportError", "check_format", "export_arch",
    "export_mlpackage", "export_module", "export_pte", "fingerprint", "library_versions", "op_module",
]
