"""``fbnet-search spaces|ops|arch``: inspect the search spaces and architectures."""

from __future__ import annotations

import json

import typer
from rich.table import Table as RichTable

from fbnet.space import get_space, list_spaces
from search.cli.common import FMT_OPT, SPACE_OPT, Fmt, console, parse_arch, space_named

commands = typer.Typer()


@commands.command()
def spaces(fmt: Fmt = FMT_OPT):
    """List the named search spaces with their op counts and versions."""
    rows = []
    for name in list_spaces():
        s = get_space(name)
        rows.append({"space": name, "version": s.version, "n_ops": len(s.ops), "resolution": s.resolution,
                     "head": s.head_channels, "classes": s.num_classes, "description": s.description})
    if fmt == Fmt.json:
        print(json.dumps(rows, indent=2))
        return
    t = RichTable("space", "version", "ops", "input", "head", "classes", "description")
    for r in rows:
        t.add_row(r["space"], r["version"], str(r["n_ops"]), f"{r['resolution']}px", str(r["head"]),
                  str(r["classes"]), r["description"])
    console.print(t)


@commands.command()
def ops(space: str = SPACE_OPT, fmt: Fmt = FMT_OPT):
    """Print a space's unique operators (the agents' work list) with their canonical keys."""
    s = space_named(space)
    if fmt == Fmt.json:
        print(json.dumps({"space": s.name, "version": s.version, "ops": s.op_list()}, indent=2))
        return
    t = RichTable("key", "block", "k", "e", "g", "cin", "hxw", "cout", "s", "layers", title=f"{s.name} ({s.version})")
    for o in s.op_list():
        t.add_row(o["key"], o["block"], str(o["kernel"] or ""), str(o["expansion"] or ""), str(o["groups"] or ""),
                  str(o["cin"]), f"{o['h']}x{o['w']}", str(o["cout"]), str(o["stride"]),
                  ",".join(map(str, o["layers"])))
    console.print(t)


@commands.command()
def arch(
    name_or_arch: str = typer.Argument(..., help="FBNet-A|B|C, 22 comma-separated block names, or 22 op indices"),
    space: str = SPACE_OPT,
    fmt: Fmt = FMT_OPT,
):
    """Show an architecture: its 22 blocks, parameter count, MFLOPs (multiply-adds) and ops."""
    s = space_named(space)
    a = parse_arch(name_or_arch)
    out = {"arch": list(a.blocks), "params": s.arch_params(a), "mflops": round(s.arch_mflops(a), 3),
           "ops": [op.key for op in s.arch_ops(a)]}
    if fmt == Fmt.json:
        print(json.dumps(out, indent=2))
        return
    console.print(f"[bold]{a}[/bold]")
    console.print(f"space {s.name}: {out['params'] / 1e6:.3f} M params, {out['mflops']:.1f} MFLOPs, "
                  f"{len(out['ops'])} ops")
