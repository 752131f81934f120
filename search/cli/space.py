"""``fbnet-search spaces|ops|arch``: inspect the search spaces (v1 FBNet and v2 FBNetV2) and architectures.

Thin shells over :mod:`fbnet.space` (v1) and :mod:`fbnet.space_v2` (``lookup_space``, ``grid_summary``,
``op_list``, ``arch_summary``). A v2 grid has tens of thousands of ops, so ``ops`` on a v2 space prints
its size and the first rows only unless asked (``--limit N``, ``--all``, ``--count``, ``--format json``).
"""

from __future__ import annotations

import json
from collections import Counter

import typer
from rich.box import SIMPLE_HEAD
from rich.table import Table as RichTable

from fbnet.arch_v2 import REFERENCE_SPACE, ArchV2, ArchV2Error
from fbnet.cli import fail
from fbnet.space import Arch, ArchError, SpaceError, get_space, list_spaces
from fbnet.space_v2 import (
    SpaceV2,
    SpaceV2Error,
    arch_summary,
    get_v2_space,
    grid_summary,
    list_v2_spaces,
    lookup_space,
    op_list,
)
from search.cli.common import FMT_OPT, Fmt, console

commands = typer.Typer()
ANY_SPACE_OPT = typer.Option("fbnet-cifar", "--space", "-s",
                             help="fbnet-224, fbnet-cifar, fbnet-<res>[-w<width>], fbnetv2-224 or fbnetv2-cifar")
V2_TEXT_ROWS = 20  # rows ``ops`` prints for a v2 space in text unless --limit/--all says otherwise


def any_space(name: str):
    """A v1 or v2 space by name, or a one-line error (exit 2)."""
    try:
        return lookup_space(name)
    except (SpaceError, SpaceV2Error) as e:
        fail(str(e))


# -- spaces ---------------------------------------------------------------------------------------


def _v2_row(name: str) -> dict:
    s = get_v2_space(name)
    return {"space": name, "version": s.version, "n_ops": len(s.grid), "resolution": list(s.resolutions),
            "head": list(s.head_widths), "classes": s.num_classes, "description": s.description,
            "family": "v2", "layers": s.num_layers}


@commands.command()
def spaces(fmt: Fmt = FMT_OPT):
    """List the named search spaces (v1 FBNet, v2 FBNetV2) with their op counts and versions."""
    rows = []
    for name in list_spaces():
        s = get_space(name)
        rows.append({"space": name, "version": s.version, "n_ops": len(s.ops), "resolution": s.resolution,
                     "head": s.head_channels, "classes": s.num_classes, "description": s.description})
    rows += [_v2_row(name) for name in list_v2_spaces()]
    if fmt == Fmt.json:
        print(json.dumps(rows, indent=2))
        return
    t = RichTable("space", "version", "ops", "input", "head", "classes", "description")
    for r in rows:
        res, head = (r["resolution"], r["head"]) if "family" in r else ([r["resolution"]], [r["head"]])
        t.add_row(r["space"], r["version"], str(r["n_ops"]), "/".join(map(str, res)) + "px",
                  "/".join(map(str, head)), str(r["classes"]), r["description"])
    console.print(t)


# -- ops ------------------------------------------------------------------------------------------


def _plain_table(*columns: str, left: tuple[str, ...] = ("key", "layer", "block")) -> RichTable:
    """A borderless table whose columns never wrap (v2 rows are wide; 80 columns must hold them)."""
    t = RichTable(box=SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1, 0, 0))
    for col in columns:
        t.add_column(col, no_wrap=True, justify="left" if col in left else "right")
    return t


def _rows_shown(n: int, limit: int | None, all_rows: bool, count: bool, default: int | None) -> int:
    """How many of ``n`` rows to print: none with --count, every one with --all, else --limit or the default."""
    if count and (all_rows or limit is not None):
        fail("--count prints the size only: give it without --limit/--all")
    if all_rows and limit is not None:
        fail("give --limit N or --all, not both")
    if limit is not None and limit < 0:
        fail(f"--limit must be >= 0, got {limit}")
    if count:
        return 0
    if all_rows or (limit is None and default is None):
        return n
    return min(n, default if limit is None else limit)


def _print_json(head: dict, rows: list[dict] | None) -> None:
    """``head`` with its ``ops`` rows one per line (a v2 grid stays readable and greppable)."""
    if rows is None:
        print(json.dumps(head, indent=2))
        return
    body = ",\n".join("    " + json.dumps(r) for r in rows)
    print(json.dumps(head, indent=2)[:-2] + ',\n  "ops": [\n' + body + "\n  ]\n}")


def _v1_ops(s, fmt: Fmt, shown: int, count: bool) -> None:
    ops = s.op_list()
    if count:
        summary = {"space": s.name, "version": s.version, "ops": len(ops),
                   "by_block": dict(Counter(o["block"] for o in ops))}
        if fmt == Fmt.json:
            print(json.dumps(summary, indent=2))
        else:
            console.print(_v1_size_line(summary), highlight=False, soft_wrap=True)
        return
    if fmt == Fmt.json:
        print(json.dumps({"space": s.name, "version": s.version, "ops": ops[:shown]}, indent=2))
        return
    t = RichTable("key", "block", "k", "e", "g", "cin", "hxw", "cout", "s", "layers", title=f"{s.name} ({s.version})")
    for o in ops[:shown]:
        t.add_row(o["key"], o["block"], str(o["kernel"] or ""), str(o["expansion"] or ""), str(o["groups"] or ""),
                  str(o["cin"]), f"{o['h']}x{o['w']}", str(o["cout"]), str(o["stride"]),
                  ",".join(map(str, o["layers"])))
    console.print(t)
    if shown < len(ops):
        console.print(f"showing {shown} of {len(ops)} ops")


def _v1_size_line(summary: dict) -> str:
    blocks = ", ".join(f"{k} {v}" for k, v in summary["by_block"].items())
    return f"{summary['space']} ({summary['version']}): {summary['ops']} unique ops ({blocks})"


def _v2_size_line(g: dict) -> str:
    blocks = ", ".join(f"{k} {v}" for k, v in g["by_block"].items())
    per_res = ", ".join(f"{r} px {n}" for r, n in g["by_resolution"].items())
    return (f"{g['space']} ({g['version']}): {g['ops']} unique ops ({g['identity']} identity skips) - {blocks}; "
            f"per resolution {per_res}; {g['by_position']} layer-position combinations before deduplication")


def _v2_ops(s: SpaceV2, fmt: Fmt, shown: int, count: bool) -> None:
    g = grid_summary(s)
    rows = None if count else op_list(s)[:shown]
    if fmt == Fmt.json:
        _print_json({"space": s.name, "version": s.version, "summary": g, "shown": shown} if rows is not None
                    else g, rows)
        return
    console.print(_v2_size_line(g), highlight=False, soft_wrap=True)
    if not rows:
        return
    t = _plain_table("key", "cin", "hxw", "mid", "cout", "s", "MFLOPs", "params")
    for o in rows:
        t.add_row(o["key"], str(o["cin"]), f"{o['h']}x{o['w']}", str(o["mid"] or ""), str(o["cout"]),
                  str(o["stride"]), f"{o['macs'] / 1e6:.3f}", str(o["params"]))
    console.print(t)
    if shown < g["ops"]:
        console.print(f"showing {shown} of {g['ops']} ops: --limit N or --all for more, --format json for "
                      "machine-readable rows, --count for the size only", highlight=False, soft_wrap=True)


@commands.command()
def ops(
    space: str = ANY_SPACE_OPT,
    fmt: Fmt = FMT_OPT,
    limit: int = typer.Option(None, "--limit", "-n", help=f"print at most N ops (default: all; in text on a v2 "
                                                           f"space {V2_TEXT_ROWS})"),
    all_rows: bool = typer.Option(False, "--all", help="print every op (a v2 grid has tens of thousands)"),
    count: bool = typer.Option(False, "--count", help="print the grid's size only, no ops"),
):
    """Print a space's unique operators (the agents' work list) with their canonical keys; on a v2
    space, the size of the op grid first (unique ops by block family and resolution)."""
    s = any_space(space)
    if isinstance(s, SpaceV2):
        default = V2_TEXT_ROWS if fmt == Fmt.text else None
        _v2_ops(s, fmt, _rows_shown(len(s.grid), limit, all_rows, count, default), count)
    else:
        _v1_ops(s, fmt, _rows_shown(len(s.ops), limit, all_rows, count, None), count)


# -- arch -----------------------------------------------------------------------------------------


def _v1_arch(text: str, space_name: str) -> Arch:
    """The v1 architecture ``text``; a v2 text or reference name gets an error saying so."""
    try:
        return Arch.parse(text)
    except ArchError as e:
        try:
            ArchV2.parse(text)
        except ArchV2Error:
            fail(str(e))
        fail(f"{text.strip()[:40]!r} is an FBNetV2 architecture and {space_name} a v1 space: give --space "
             f"{REFERENCE_SPACE} (the released models) or fbnetv2-cifar")


def _v1_arch_out(s, a: Arch, fmt: Fmt) -> None:
    out = {"arch": list(a.blocks), "params": s.arch_params(a), "mflops": round(s.arch_mflops(a), 3),
           "ops": [op.key for op in s.arch_ops(a)]}
    if fmt == Fmt.json:
        print(json.dumps(out, indent=2))
        return
    console.print(f"[bold]{a}[/bold]")
    console.print(f"space {s.name}: {out['params'] / 1e6:.3f} M params, {out['mflops']:.1f} MFLOPs, "
                  f"{len(out['ops'])} ops")


def v2_layer_rows(s: SpaceV2, a: ArchV2) -> list[dict]:
    """One row per op of ``a`` in execution order, identity skips included: where it sits (stem,
    layer index and stage, head, fc), its block, expansion, shapes and counts."""
    ops = s.arch_ops(a, with_identity=True)
    where = ["stem"] + [f"{i}/s{s.layers[i].stage}" for i in range(s.num_layers)] + ["head", "fc"]
    expansions = [None, *a.expansions, s.head_expansion, None]
    rows = []
    for pos, op, e in zip(where, ops, expansions, strict=True):
        rows.append({"layer": pos, "block": "identity" if op.is_identity else op.block, "expansion": e,
                     "cin": op.cin, "hw": op.h, "mid": op.mid, "cout": op.cout, "stride": op.stride,
                     "mflops": op.macs / 1e6, "params": op.params})
    return rows


def _v2_header(out: dict) -> str:
    name = out.get("name", "architecture")
    mf, pm = f"{out['mflops']:.2f} MFLOPs", f"{out['params'] / 1e6:.3f} M params"
    if "released_mflops" in out:
        mf += f" (released {out['released_mflops']:.2f}, {out['mflops_off_pct']:+.2f} %)"
        pm += f" (released {out['released_params'] / 1e6:.3f}, {out['params_off_pct']:+.2f} %)"
    off = f", {len(out['off_grid_expansions'])} layers off the expansion grid" if out["off_grid_expansions"] else ""
    return (f"{name} in {out['space']} at {out['resolution']} px: {mf}, {pm}, {len(out['ops'])} ops, "
            f"{out['identity_layers']} identity layers{off}")


def _v2_arch_out(s: SpaceV2, text: str, fmt: Fmt) -> None:
    try:
        out = arch_summary(s, text)
    except ArchV2Error as e:
        try:
            Arch.parse(text)
        except ArchError:
            fail(str(e))
        fail(f"{text.strip()[:40]!r} is a v1 FBNet architecture and {s.name} a v2 space: give --space "
             "fbnet-cifar, fbnet-224 or fbnet-<res>[-w<width>]")
    if fmt == Fmt.json:
        print(json.dumps(out, indent=2))
        return
    console.print(_v2_header(out), highlight=False, soft_wrap=True)
    console.print(out["arch"], highlight=False, soft_wrap=True)
    t = _plain_table("layer", "block", "e", "cin", "hw", "mid", "cout", "s", "MFLOPs", "params")
    for r in v2_layer_rows(s, ArchV2.parse(out["arch"])):
        e = "" if r["expansion"] is None else f"{r['expansion']:g}"
        t.add_row(r["layer"], r["block"], e, str(r["cin"]), str(r["hw"]), str(r["mid"] or ""), str(r["cout"]),
                  str(r["stride"]), f"{r['mflops']:.2f}", str(r["params"]))
    console.print(t)


@commands.command()
def arch(
    name_or_arch: str = typer.Argument(..., help="v1: FBNet-A|B|C, 22 comma-separated block names or 22 op "
                                                 "indices; v2: FBNetV2-F1..F4|L1|L2 or 'res:R,stem:C,"
                                                 "block:width:eE,...,head:C'"),
    space: str = ANY_SPACE_OPT,
    fmt: Fmt = FMT_OPT,
):
    """Show an architecture: its blocks, parameter count, MFLOPs (multiply-adds) and ops; on a v2
    space also its resolution, a per-layer table and, for a released model, how far off the release."""
    s = any_space(space)
    if isinstance(s, SpaceV2):
        _v2_arch_out(s, name_or_arch, fmt)
    else:
        _v1_arch_out(s, _v1_arch(name_or_arch, s.name), fmt)
