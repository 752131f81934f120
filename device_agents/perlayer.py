"""In-context per-layer timing: each layer's cost inside a whole model, next to its table entry.

Method: **prefix models**. For an architecture, the stem alone (k = 0), stem + the first k layers
for every k = 1..22, and the whole model are exported with the whole model's weights and timed in
the same interleaved rounds as everything else; layer k costs ``t(k + 1) - t(k)`` in context, the
stem ``t(0)``, the tail (head, pool, fc) ``t(whole) - t(22)``. An identity skip adds nothing to the
program: its prefix is the previous one (exported and timed once), so its in-context cost is 0,
exactly as the table serves a measured skip.

Why not ETDump: the runner writes one (``fbnet-runner --etdump-dir``) and the devtools Inspector
parses it, but the XNNPACK delegate of the executorch 1.5.1 wheel reports its events per XNNPACK
operator (``Convolution (NHWC, F32) IGEMM #3``, 94 of them for FBNet-A on fbnet-cifar) with no debug
handle that ties them to our layers; attributing them needs the export's ETRecord. Prefix models
need nothing but the runtime.
"""

from __future__ import annotations

import hashlib
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from fbnet.space import NUM_LAYERS


def prefix_key(arch_key: str, k: int) -> str:
    return f"{arch_key}-p{k:02d}"


def canonical_k(space, arch, k: int) -> int:
    """The smallest prefix length with the same program as ``k`` (identity skips add nothing)."""
    ops = space.arch_ops(arch, with_identity=True)  # stem, the layers, head, pool, fc
    while k > 0 and ops[k].is_identity:  # ops[k] is layer k - 1
        k -= 1
    return k


def prefix_programs(space, labelled, keys: dict[str, str], folder: Path, fmt: str) -> dict[str, tuple]:
    """key -> (arch, k, path) for every distinct prefix k = 0..NUM_LAYERS of every architecture (the
    whole model is the validate flow's own program)."""
    out = {}
    for label, arch in labelled:
        for k in sorted({canonical_k(space, arch, k) for k in range(NUM_LAYERS + 1)}):
            key = prefix_key(keys[label], k)
            digest = hashlib.sha256(f"{arch.to_text()}|{k}".encode()).hexdigest()[:12]
            out[key] = (arch, k, folder / f"prefix-{digest}-{k:02d}.{fmt}")
    return out


@dataclass
class LayerRow:
    part: str  # "stem", "layer 0".."layer 21", "tail"
    ops: list[str]  # the table's op keys for this part
    table_us: float  # the table's value(s), as fbnet.lut.predict prices them
    in_context_us: float  # measured inside the model (prefix differences)
    table_overhead_us: float  # the per-call overhead the table's entries carry (ops run x overhead)

    @property
    def error_us(self) -> float:
        return self.table_us - self.in_context_us

    def to_dict(self) -> dict:
        return {**asdict(self), "error_us": self.error_us}


def layer_rows(space, arch, table, medians: dict[str, float], arch_key: str) -> list[LayerRow]:
    """Per-layer table vs in-context rows of ``arch`` from the prefix medians (``key -> median us``)."""
    from fbnet.lut import predict

    per_op = predict(table, arch, space)["per_op"]  # stem, the 22 layers, head, pool, fc
    ops = space.arch_ops(arch, with_identity=True)
    ovh = table.overhead_us or 0.0
    t = [medians[prefix_key(arch_key, canonical_k(space, arch, k))] for k in range(NUM_LAYERS + 1)]
    rows = [LayerRow("stem", [per_op[0]["key"]], per_op[0]["latency_us"], t[0], ovh)]
    for i in range(NUM_LAYERS):
        op, p = ops[1 + i], per_op[1 + i]
        rows.append(LayerRow(f"layer {i}", [p["key"]], p["latency_us"], t[i + 1] - t[i],
                             0.0 if op.is_identity else ovh))
    tail = per_op[1 + NUM_LAYERS:]
    rows.append(LayerRow("tail", [p["key"] for p in tail], sum(p["latency_us"] for p in tail),
                         medians[arch_key] - t[NUM_LAYERS], ovh * sum(not o.is_identity for o in ops[1 + NUM_LAYERS:])))
    return rows


def summary(rows: list[LayerRow], top: int = 3) -> dict:
    """Where the table's error sits: the total, and the parts with the largest |error|."""
    total = sum(r.error_us for r in rows)
    worst = sorted(rows, key=lambda r: -abs(r.error_us))[:top]
    return {"table_us": sum(r.table_us for r in rows), "in_context_us": sum(r.in_context_us for r in rows),
            "error_us": total, "median_abs_error_us": statistics.median(abs(r.error_us) for r in rows),
            "worst": [{"part": r.part, "ops": r.ops, "error_us": round(r.error_us, 1)} for r in worst]}


def plot(per_arch: dict[str, list[LayerRow]], path: Path, title: str) -> Path:
    """Bars per part: table entry vs in-context cost, one panel per architecture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(per_arch)
    fig, axes = plt.subplots(n, 1, figsize=(12, 3.2 * n), squeeze=False)
    for ax, (label, rows) in zip(axes[:, 0], per_arch.items(), strict=True):
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], [r.table_us for r in rows], width=0.4, label="table entry")
        ax.bar([i + 0.2 for i in x], [r.in_context_us for r in rows], width=0.4, label="in context (prefix difference)")
        ax.set_xticks(list(x), [r.part.replace("layer ", "L") for r in rows], fontsize=7)
        s = summary(rows)
        ax.set_title(f"{label}: table {s['table_us']:.0f} us, in context {s['in_context_us']:.0f} us", fontsize=9)
        ax.set_ylabel("us")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
