"""``fbnet-search train|export``: train an architecture from scratch; export it (.pte / .mlpackage)."""

from __future__ import annotations

import json
from enum import StrEnum
from functools import partial
from pathlib import Path

import typer

from fbnet.cli import Use, fail, options
from search.cli.common import DATA_ENV_HELP, arch_from, console, space_named
from search.config import ChildConfig, DataConfig, Execution

commands = typer.Typer()
ARCH_OPT = typer.Option(None, "--arch", "-a", help="FBNet-A|B|C, 22 block names or 22 op indices")
CHILD_RUN = Use(Execution, only=("out", "cpu", "progress"), defaults={"out": Path("runs/child")},
                help={"out": "output folder (child.pt, child.json)", "progress": "progress bar"})


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

    a, doc = arch_from(arch, from_file)
    s = space_named(space or doc.get("space") or "fbnet-cifar")
    device = torch.device("cuda") if (torch.cuda.is_available() and not execution.cpu) else torch.device("cpu")
    try:
        ds = load_dataset(data.data, s.resolution, subset=data.subset, seed=child.seed, num_classes=s.num_classes)
        model, report = train_child(s, a, ds, child, progress=partial(progress, enabled=execution.progress),
                                    device=device)
    except (DataError, TrainError) as e:
        fail(str(e))
    out = execution.out
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"space": s.name, "arch": list(a.blocks), "state_dict": model.cpu().state_dict()}, out / "child.pt")
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
        arch = ",".join(doc["arch"])
    a, doc2 = arch_from(arch, from_file)
    doc = {**doc, **doc2}
    if state_dict is not None and list(a.blocks) != list(doc["arch"]):
        fail(f"--weights {weights} belong to another architecture")
    s = space_named(space or doc.get("space") or "fbnet-cifar")
    from fbnet.export import ExportError, export_arch, export_format

    try:
        path = export_arch(s, a, export_format(fmt.value, precision), out, state_dict=state_dict)
    except ExportError as e:
        fail(str(e))
    console.print(f"exported {a} ({s.name}) to {path or out}", highlight=False)
