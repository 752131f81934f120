"""`fbnet-search train|export`: train an architecture from scratch; export it (.pte / .mlpackage)."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

import typer

from fbnet.cli import fail
from search.cli import _arch_from, _space, app, console


@app.command()
def train(
    arch: str = typer.Option(None, "--arch", "-a", help="FBNet-A|B|C, 22 block names or 22 op indices"),
    from_file: Path = typer.Option(None, "--from", help="DIR or DIR/arch.json written by `run` (its argmax)"),
    space: str = typer.Option(None, "--space", "-s", help="(default: arch.json's space, else fbnet-cifar)"),
    data: str = typer.Option("fashion-mnist", "--data", help="fashion-mnist, digits, or a folder"),
    epochs: int = typer.Option(10, "--epochs"),
    batch_size: int = typer.Option(64, "--batch-size", "-b"),
    lr: float = typer.Option(None, "--lr", help="SGD lr (default 0.1 * batch / 192)"),
    subset: int = typer.Option(None, "--subset", help="use N training images"),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(Path("runs/child"), "--out", "-o", help="writes child.pt and child.json"),
    cpu: bool = typer.Option(False, "--cpu", help="stay on the CPU even if CUDA is available"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Train an architecture from scratch (FBNet(space, arch)) and report its test accuracy."""
    import torch

    from search.child import ChildConfig, train_child
    from search.config import TrainError
    from search.data import DataError, load_dataset

    a, doc = _arch_from(arch, from_file)
    s = _space(space or doc.get("space") or "fbnet-cifar")
    device = torch.device("cuda") if (torch.cuda.is_available() and not cpu) else torch.device("cpu")
    try:
        ds = load_dataset(data, s.resolution, subset=subset, seed=seed, num_classes=s.num_classes)
        model, report = train_child(s, a, ds, ChildConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed),
                                    progress=progress, device=device)
    except (DataError, TrainError) as e:
        fail(str(e))
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"space": s.name, "arch": list(a.blocks), "state_dict": model.cpu().state_dict()}, out / "child.pt")
    (out / "child.json").write_text(json.dumps(report, indent=1))
    console.print(f"[bold]{a}[/bold]\ntest accuracy {report['test_acc']:.4f} on {report['n_test']} {ds.name} "
                  f"images after {epochs} epochs; wrote {out / 'child.pt'}", highlight=False)


class ExportFmt(StrEnum):
    pte = "pte"
    mlpackage = "mlpackage"


@app.command()
def export(
    arch: str = typer.Option(None, "--arch", "-a", help="FBNet-A|B|C, 22 block names or 22 op indices"),
    from_file: Path = typer.Option(None, "--from", help="DIR or DIR/arch.json written by `run`"),
    weights: Path = typer.Option(None, "--weights", help="child.pt from `train` (else freshly initialised)"),
    space: str = typer.Option(None, "--space", "-s", help="(default: from arch.json / child.pt, else fbnet-cifar)"),
    fmt: ExportFmt = typer.Option(ExportFmt.pte, "--format", help="pte (ExecuTorch/XNNPACK) or mlpackage (Core ML)"),
    out: Path = typer.Option(..., "--out", "-o", help="output file (.pte) or folder (.mlpackage)"),
    precision: str = typer.Option(None, "--precision", help="pte: fp32 or int8 (PT2E, XNNPACK quantizer, as the "
                                  "agents' int8 ops); mlpackage: fp16 [default: fp32 / fp16]"),
):
    """Export an architecture through the device agents' exporters (.pte or .mlpackage)."""
    import torch

    state_dict = None
    doc: dict = {}
    if weights is not None:
        try:
            ck = torch.load(weights, map_location="cpu", weights_only=False)
            state_dict, doc = ck["state_dict"], {"arch": ck["arch"], "space": ck["space"]}
        except (OSError, KeyError, RuntimeError) as e:
            fail(f"cannot read weights {weights}: {e}")
        if arch is None and from_file is None:
            arch = ",".join(doc["arch"])
    a, doc2 = _arch_from(arch, from_file)
    doc = {**doc, **doc2}
    if state_dict is not None and list(a.blocks) != list(doc["arch"]):
        fail(f"--weights {weights} belong to another architecture")
    s = _space(space or doc.get("space") or "fbnet-cifar")
    from fbnet.export import ExportError, export_arch, export_format

    try:
        path = export_arch(s, a, export_format(fmt.value, precision), out, state_dict=state_dict)
    except ExportError as e:
        fail(str(e))
    console.print(f"exported {a} ({s.name}) to {path or out}", highlight=False)
