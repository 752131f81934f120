"""``fbnet-search train|export``: train an architecture from scratch; export it (.pte / .mlpackage).
A v2 architecture (``--from DIR`` of a v2 search, or ``--arch TEXT --space fbnetv2-cifar``) is the
child without masks (:class:`fbnet.blocks.FBNetV2Net`) at its widths and its resolution."""

from __future__ import annotations

import json
from enum import StrEnum
from functools import partial
from pathlib import Path

import typer

from fbnet.arch_v2 import ArchV2, ArchV2Error
from fbnet.cli import Use, fail, options
from fbnet.space_v2 import SpaceV2, get_v2_space, is_v2_space
from search.cli.common import DATA_ENV_HELP, arch_from, console, read_arch, space_named
from search.config import ChildConfig, DataConfig, Execution

commands = typer.Typer()
ARCH_OPT = typer.Option(None, "--arch", "-a", help="FBNet-A|B|C, 22 block names or 22 op indices; with a v2 "
                        "--space a v2 architecture text or FBNetV2-F1..L2")
CHILD_RUN = Use(Execution, only=("out", "cpu", "progress"), defaults={"out": Path("runs/child")},
                help={"out": "output folder (child.pt, child.json)", "progress": "progress bar"})


def _v2_arch(text: str, space: SpaceV2) -> ArchV2:
    try:
        a = ArchV2.parse(text)
        space.check_arch(a)
    except ArchV2Error as e:
        fail(str(e))
    return a


def arch_and_space(arch: str | None, from_file: Path | None, space: str | None):
    """(architecture, space, arch.json's arch/space) from ``--arch``/``--from`` and ``--space``: v1 or v2."""
    name = space
    if from_file is not None and arch is None:
        doc = read_arch(from_file)
        name = name or doc.space
        if doc.is_v2:
            if not is_v2_space(name or ""):
                fail(f"{from_file} holds a v2 architecture; its space ({name}) is not a v2 space")
            return doc.architecture, get_v2_space(name), {"arch": doc.arch, "space": name}
    elif arch is not None and from_file is None and is_v2_space(name or ""):
        s = get_v2_space(name)
        return _v2_arch(arch, s), s, {}
    a, doc = arch_from(arch, from_file)
    return a, space_named(name or doc.get("space") or "fbnet-cifar"), doc


@commands.command(epilog=DATA_ENV_HELP)
@options(config_file=True, data=DataConfig, child=ChildConfig, execution=CHILD_RUN)
def train(
    arch: str = ARCH_OPT,
    from_file: Path = typer.Option(None, "--from", help="DIR or DIR/arch.json written by `run` (its argmax)"),
    space: str = typer.Option(None, "--space", "-s", help="(default: arch.json's space, else fbnet-cifar)"),
    *, data: DataConfig, child: ChildConfig, execution: Execution,
):
    """Train an architecture from scratch (FBNet(space, arch)) and report its test accuracy."""
    import torch

    from fbnet.progress import progress
    from search.child import train_child
    from search.config import TrainError
    from search.data import DataError, load_dataset

    a, s, _ = arch_and_space(arch, from_file, space)
    device = torch.device("cuda") if (torch.cuda.is_available() and not execution.cpu) else torch.device("cpu")
    res = a.resolution if isinstance(s, SpaceV2) else s.resolution
    try:
        ds = load_dataset(data.data, res, subset=data.subset, seed=child.seed, num_classes=s.num_classes)
        model, report = train_child(s, a, ds, child, progress=partial(progress, enabled=execution.progress),
                                    device=device)
    except (DataError, TrainError) as e:
        fail(str(e))
    out = execution.out
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"space": s.name, "arch": report["arch"], "state_dict": model.cpu().state_dict()}, out / "child.pt")
    (out / "child.json").write_text(json.dumps(report, indent=1))
    console.print(f"[bold]{a}[/bold]\ntest accuracy {report['test_acc']:.4f} on {report['n_test']} {ds.name} "
                  f"images after {child.epochs} epochs; wrote {out / 'child.pt'}", highlight=False)


class ExportFmt(StrEnum):
    pte = "pte"
    mlpackage = "mlpackage"


def _weights(path: Path | None) -> tuple[dict | None, dict]:
    """child.pt's state dict and its ``arch``/``space`` (None, {} without ``--weights``)."""
    if path is None:
        return None, {}
    import torch

    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
        return ck["state_dict"], {"arch": ck["arch"], "space": ck["space"]}
    except (OSError, KeyError, RuntimeError) as e:
        fail(f"cannot read weights {path}: {e}")


@commands.command(epilog="Environment: TQDM_DISABLE=0 shows coremltools' progress bars (hidden by default).")
def export(
    arch: str = ARCH_OPT,
    from_file: Path = typer.Option(None, "--from", help="DIR or DIR/arch.json written by `run`"),
    weights: Path = typer.Option(None, "--weights", help="child.pt from `train` (else freshly initialised)"),
    space: str = typer.Option(None, "--space", "-s", help="(default: from arch.json / child.pt, else fbnet-cifar)"),
    fmt: ExportFmt = typer.Option(ExportFmt.pte, "--format", help="pte (ExecuTorch/XNNPACK) or mlpackage (Core ML)"),
    out: Path = typer.Option(..., "--out", "-o", help="output file (.pte) or folder (.mlpackage)"),
    precision: str = typer.Option(None, "--precision", help="pte: fp32 or int8 (PT2E, XNNPACK quantizer, as the "
                                  "agents' int8 ops); mlpackage: fp16 (default fp32 / fp16)"),
):
    """Export an architecture through the device agents' exporters (.pte or .mlpackage)."""
    state_dict, doc = _weights(weights)
    if state_dict is not None and arch is None and from_file is None:
        arch = doc["arch"] if isinstance(doc["arch"], str) else ",".join(doc["arch"])
    a, s, doc2 = arch_and_space(arch, from_file, space or doc.get("space"))
    doc = {**doc, **doc2}
    from search.child import arch_label

    if state_dict is not None and arch_label(a) != doc["arch"]:
        fail(f"--weights {weights} belong to another architecture")
    from fbnet.export import ExportError, export_arch, export_format

    try:
        path = export_arch(s, a, export_format(fmt.value, precision), out, state_dict=state_dict)
    except ExportError as e:
        fail(str(e))
    console.print(f"exported {a} ({s.name}) to {path or out}", highlight=False)
