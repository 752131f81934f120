"""A module -> an ExecuTorch program (.pte, XNNPACK, fp32 or int8) or a Core ML package (.mlpackage, fp16).

Formats: ``pte`` (fp32), ``pte-int8`` (PT2E with the XNNPACK quantizer: symmetric per-channel int8
weights, static int8 activations calibrated on :data:`CALIBRATION_INPUTS` seeded random inputs of
the module's input shape; a ``.pte`` file like fp32) and ``mlpackage`` (fp16). :func:`export_format`
maps (runtime format, precision) to one of them; the cache fingerprint includes the format, so
precisions never share a cache folder.

Modules come only from :mod:`fbnet.blocks` (the registry the supernet trains), in eval mode, so
the agents time and the search exports exactly what the supernet trains. The agents' export
cache and worker pool live in ``device_agents.exporters``; :func:`fingerprint` is what names a
cache generation.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import itertools
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
from fbnet.arch_v2 import ArchV2
from fbnet.io import atomic_target
from fbnet.space import Arch, Op, Space
from fbnet.space_v2 import SpaceV2

# executorch pulls in torchao, which logs a warning per CUDA kernel library it cannot load on a
# CPU-only machine, and torch's pytree a deprecation per process: noise in every export.
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

# Bump whenever what an export produces changes in a way the library versions do not capture.
EXPORTER_VERSION = "2"  # 2: BatchNorm folded into the convolutions before export
FORMATS = ("pte", "pte-int8", "mlpackage")
SUFFIX = {"pte": ".pte", "pte-int8": ".pte", "mlpackage": ".mlpackage"}
PRECISION = {"pte": "fp32", "pte-int8": "int8", "mlpackage": "fp16"}
CALIBRATION_INPUTS = 4
CALIBRATION_SEED = 0
WEIGHT_SEED = 0


class ExportError(RuntimeError):
    """An op or model that could not be exported."""


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")


def export_format(base: str, precision: str | None) -> str:
    """The export format of a runtime format (``pte``: ExecuTorch, ``mlpackage``: Core ML) in ``precision``
    (None: the runtime's default, fp32 for ExecuTorch, fp16 for Core ML)."""
    check_format(base)
    base = "pte" if base == "pte-int8" else base
    want = precision or PRECISION[base]
    for fmt, prec in PRECISION.items():
        if prec == want and (fmt == base or fmt.startswith(base + "-")):
            return fmt
    have = ", ".join(p for f, p in PRECISION.items() if f.startswith(base))
    raise ExportError(f"{base} programs come in {have}, not {want!r}")


@cache
def library_versions() -> dict[str, str]:
    return {"torch": version("torch"), "executorch": version("executorch"), "coremltools": version("coremltools")}


@cache
def fingerprint(fmt: str) -> str:
    """Short hash of everything besides the op key that decides the exported file."""
    check_format(fmt)
    lib = "coremltools" if fmt == "mlpackage" else "executorch"
    v = library_versions()
    parts = [fmt, EXPORTER_VERSION, v["torch"], v[lib], inspect.getsource(blocks)]
    if fmt == "pte-int8":  # the quantization recipe decides the program too
        parts += [inspect.getsource(quantize_int8), str(CALIBRATION_INPUTS), str(CALIBRATION_SEED)]
    blob = "|".join(parts)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def quantize_int8(module: nn.Module, example: torch.Tensor) -> nn.Module:
    """PT2E int8 with the XNNPACK quantizer: symmetric per-channel weights, static activations calibrated
    on :data:`CALIBRATION_INPUTS` seeded random inputs of ``example``'s shape."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                                is_dynamic=False))
    graph = torch.export.export(module.eval(), (example,), strict=False).module()
    graph = prepare_pt2e(graph, quantizer)
    gen = torch.Generator().manual_seed(CALIBRATION_SEED)
    for _ in range(CALIBRATION_INPUTS):
        graph(torch.randn(example.shape, generator=gen, dtype=example.dtype))
    return convert_pt2e(graph)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` in eval mode with every ``BatchNorm2d`` that follows a ``Conv2d`` in an
    ``nn.Sequential`` folded into that convolution's weight and bias (``torch.nn.utils.fusion``); the
    original is not touched.

    Every BN of :mod:`fbnet.blocks` sits so (``ConvBNReLU``, ``ConvBNAct``). The backends fold BN into
    the convolution anyway (XNNPACK's lowering, Core ML's conversion), so the program that runs is the
    same; folding first halves the graph the lowering walks, which is most of a cold export's time
    (``bench/export_cost.py``)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(module).eval()
    for seq in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in itertools.pairwise(names):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = nn.Identity()
    return folded


def export_pte(module: nn.Module, example: torch.Tensor, path: str | Path, precision: str = "fp32",
               fold_bn: bool = True) -> Path:
    """torch.export + XNNPACK lowering (fp32, or int8 through :func:`quantize_int8`) to an ExecuTorch
    program at ``path``; BN folded first (:func:`fold_batchnorm`) unless ``fold_bn`` is False (the
    export cost bench's baseline)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if precision not in ("fp32", "int8"):
        raise ExportError(f"ExecuTorch programs are exported in fp32 or int8, not {precision!r}")
    path = Path(path)
    module = fold_batchnorm(module) if fold_bn else module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.13's own pytree deprecation, raised inside executorch's lowering: not ours to fix
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        if precision == "int8":
            module = quantize_int8(module, example)
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
    """jit.trace + Core ML mlprogram (iOS 17, fp16 compute, fp16 input and output) at ``path``, BN
    folded first as for ExecuTorch."""
    import coremltools as ct
    import numpy as np

    path = Path(path)
    module = fold_batchnorm(module)
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


def export_module(module: nn.Module, example: torch.Tensor, fmt: str, path: str | Path,
                  fold_bn: bool = True) -> Path:
    check_format(fmt)
    if fmt == "mlpackage":
        return export_mlpackage(module, example, path)
    return export_pte(module, example, path, precision=PRECISION[fmt], fold_bn=fold_bn)


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


def export_arch(space: Space | SpaceV2, arch: Arch | ArchV2, fmt: str, path: str | Path,
                state_dict: dict | None = None) -> Path:
    """A whole architecture (``fbnet.blocks.FBNet``; a v2 one: ``fbnet.blocks.FBNetV2Net`` at its
    resolution) to one program at ``path``."""
    check_format(fmt)
    v2 = isinstance(space, SpaceV2)
    with torch.random.fork_rng():
        torch.manual_seed(WEIGHT_SEED)
        model = blocks.FBNetV2Net(space, arch) if v2 else blocks.FBNet(space, arch)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    shape = space.input_shape(arch.resolution) if v2 else space.input_shape
    try:
        return export_module(model.eval(), blocks.example_input(shape), fmt, path)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"export of {arch.to_text()} to {fmt} failed: {type(e).__name__}: {e}") from e


__all__ = [
    "CALIBRATION_INPUTS", "EXPORTER_VERSION", "FORMATS", "PRECISION", "SUFFIX", "CallOverhead", "ExportError",
    "check_format", "export_arch", "fold_batchnorm", "export_format", "export_mlpackage", "export_module", "export_pte", "fingerprint",
    "library_versions", "op_module", "quantize_int8",
]
