"""Does theta learn from accuracy? The split-half signal of searches under several settings.

Each ``--set NAME:key=value,...`` (SearchConfig fields, as ``--search-opt`` takes them; ``subset=N``
and ``resolution`` are read here) runs one search on the same table and target and reports, per
search epoch, ``theta_signal`` (:mod:`search.signal`: the cosine between the summed accuracy gradients
of a theta epoch's even and odd batches; near 0 when theta's accuracy steps are noise), its median,
the entropy at the end, the theta step's accuracy in the first and last search epoch, and the CPU time.

``--curve 400,1000,2500,5000``: after the warm-up (theta still uniform) and at the end, the same cosine
on disjoint halves of the test images of those sizes, the weights fixed and the supernet run on
softmax(theta) (no Gumbel noise): how many images a theta step would need before the data agree on
which options help. Read the warm-up's: at the end a theta that walked somewhere the data dislike
gets a consistent pull back, which is agreement on where theta went, not on which options help.

    python bench/theta_signal.py --table host-cpu.json --target-frac 0.35 --subset 1000 --epochs 6 \\
        --set 8px:proxy_resolution=8 --set 16px:proxy_resolution=16 --curve 400,1000,2500
    python bench/theta_signal.py --space fbnetv2-cifar --cost flops --target-frac 0.16 --subset 2000 \\
        --epochs 10 --set default: --curve 400,1000,2500,5000

Prints a table and writes ``bench/out/theta_signal.json`` (``--json``). Run one search at a time with
``OMP_NUM_THREADS=1`` beside another job, or alone: several torch processes on two cores spin.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO))
from fbnet.client import get_table  # noqa: E402
from fbnet.lut import build_lut  # noqa: E402
from fbnet.space import get_space  # noqa: E402
from fbnet.space_v2 import get_v2_space  # noqa: E402
from search.config import SearchConfig, search_overrides  # noqa: E402
from search.data import load_dataset  # noqa: E402
from search.select import latency_range  # noqa: E402
from search.signal import SplitHalf, fmt_signal, signal_summary  # noqa: E402
from search.trainer import RunOptions, Searcher, search_resolution  # noqa: E402
from search.trainer_v2 import V2Cost, V2Searcher, target_field, train_resolution  # noqa: E402
from search.v2_cost import cost_tables, price_for  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="fbnet-cifar", help="fbnet-cifar (needs --table) or fbnetv2-cifar")
    p.add_argument("--table", type=Path, help="a saved table (fbnet-search fetch --out): v1, or v2 with --cost latency")
    p.add_argument("--cost", choices=["latency", "flops", "params"], default="latency", help="v2: what the search prices")
    p.add_argument("--target-frac", type=float, default=0.35, help="the target as a fraction of the cost's range")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--subset", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="NAME:k=v,k=v", help="one search per --set")
    p.add_argument("--curve", default="", help="images per half for the final-state curve, e.g. 400,1000,2500")
    p.add_argument("--json", type=Path, default=OUT / "theta_signal.json", help="where the results go")
    a = p.parse_args()
    if not a.set:
        a.set = ["default:"]
    return a


def setting(spec: str) -> tuple[str, int | None, dict]:
    """``NAME:k=v,...`` -> (name, subset override, SearchConfig overrides)."""
    name, _, rest = spec.partition(":")
    items = [kv for kv in rest.split(",") if kv]
    subset = next((int(kv.split("=", 1)[1]) for kv in items if kv.startswith("subset=")), None)
    try:
        return name, subset, search_overrides([kv for kv in items if not kv.startswith("subset=")])
    except ValueError as e:
        raise SystemExit(f"--set {spec}: {e}") from None


def searcher(a, overrides: dict, subset: int, out: Path):
    """A v1 or v2 searcher for this setting, its target in the cost's unit."""
    if a.space.startswith("fbnetv2"):
        space = get_v2_space(a.space)
        if a.cost == "latency":
            from fbnet.configuration import Selector
            from search.cli.search_v2 import v2_cost
            from search.config import TableSource
            cost = v2_cost(SearchConfig(cost="latency"), TableSource(space=space.name, table=a.table), Selector(), space)
        else:
            cost = V2Cost(a.cost, cost_tables(space, price_for(a.cost, space)))
        lo, hi = cost.range()
        target = lo + a.target_frac * (hi - lo)
        cfg = SearchConfig(cost=a.cost, epochs=a.epochs, seed=a.seed, **target_field(a.cost, target), **overrides)
        data = load_dataset(a.data, train_resolution(cfg, space), subset=subset, seed=a.seed, num_classes=space.num_classes)
        return V2Searcher(cfg, space, cost, data, out, RunOptions(tensorboard=False)), target
    if a.table is None:
        raise SystemExit(f"--space {a.space} needs --table (a saved v1 table)")
    space = get_space(a.space)
    lut = build_lut(get_table(space=space.name, table_file=str(a.table)), space)
    lo, hi = latency_range(lut)
    target = lo + a.target_frac * (hi - lo)
    cfg = SearchConfig(epochs=a.epochs, seed=a.seed, target_ms=target / 1000, **overrides)
    data = load_dataset(a.data, search_resolution(cfg, space), subset=subset, seed=a.seed, num_classes=space.num_classes)
    return Searcher(cfg, space, lut, data, out, RunOptions(tensorboard=False)), target


def accuracy_grad(s, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d CE / d theta of the supernet run on softmax(theta), the weights fixed (BatchNorm as in a step)."""
    params = list(s.arch.parameters())
    if isinstance(s, V2Searcher):
        logits = s.net(x, s.arch.probs())
    else:
        logits = s.net(x, s.arch.probs(), s.cfg.single)
    grads = torch.autograd.grad(F.cross_entropy(logits, y), params)
    return torch.cat([g.flatten() for g in grads])


def curve_images(s, a, sizes: list[int]):
    """The test images for :func:`curve` (checked before the search runs), or None without ``--curve``."""
    if not sizes:
        return None
    test = load_dataset(a.data, s.data.train_x.shape[-1], subset=None, seed=a.seed, num_classes=s.data.num_classes)
    if 2 * max(sizes) > len(test.test_y):
        raise SystemExit(f"--curve {max(sizes)} needs {2 * max(sizes)} test images; {a.data} has {len(test.test_y)}")
    return test


def curve(s, test, sizes: list[int]) -> list[dict]:
    """The split-half cosine on disjoint halves of ``n`` test images each, batches of the theta batch."""
    if test is None:
        return []
    bs, grads, need = s.t_batch, [], 2 * max(sizes)
    s.net.train()
    for i in range(0, need, bs):
        grads.append(accuracy_grad(s, test.test_x[i:i + bs], test.test_y[i:i + bs]))
    out = []
    for n in sizes:
        k = n // bs
        halves = SplitHalf()
        halves.add(torch.stack(grads[:k]).sum(0))
        halves.add(torch.stack(grads[k:2 * k]).sum(0))
        out.append({"images_per_half": k * bs, "cosine": halves.cosine()})
    return out


def run_one(a, spec: str) -> dict:
    name, subset, overrides = setting(spec)
    subset = subset or a.subset
    s, target = searcher(a, overrides, subset, OUT / "theta_signal" / a.space / name)
    sizes = [int(v) for v in a.curve.split(",") if v]
    test = curve_images(s, a, sizes)
    t0, c0, start = time.perf_counter(), time.process_time(), []
    for epoch in range(s.cfg.epochs):
        s.history.append(s.train_epoch(epoch))
        if epoch + 1 == s.cfg.warmup:  # theta still uniform: do the data agree before theta walks?
            c1 = time.process_time()
            start = curve(s, test, sizes)
            c0 += time.process_time() - c1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    hist = [h for h in s.history if h.get("theta_acc") is not None]
    ent = max(s.arch.entropies().values()) if isinstance(s, V2Searcher) else s.arch.entropy()
    row = {"name": name, "subset": subset, "overrides": overrides, "target": target,
           "signal_per_epoch": [h["theta_signal"] for h in hist], "signal_median": signal_summary(hist),
           "entropy": ent, "theta_acc_first": hist[0]["theta_acc"] if hist else None,
           "theta_acc_last": hist[-1]["theta_acc"] if hist else None, "theta_steps": s.theta_steps,
           "wall_s": wall, "cpu_s": cpu,
           "curve_after_warmup": start, "curve": curve(s, test, sizes)}
    print(f"{name}: signal {' '.join(fmt_signal(v) for v in row['signal_per_epoch'])} (median "
          f"{fmt_signal(row['signal_median'])}), entropy {ent:.2f}, {cpu / 60:.1f} CPU-min"
          + "".join(f"; {c['images_per_half']}/half {fmt_signal(c['cosine'])} after the warm-up, "
                    f"{fmt_signal(e['cosine'])} at the end" for c, e in zip(start, row["curve"], strict=False)), flush=True)
    return row


def main() -> None:
    a = parse()
    torch.manual_seed(a.seed)
    rows = [run_one(a, spec) for spec in a.set]
    print(f"\n{'setting':22s} {'subset':>6s} {'median':>7s} {'entropy':>7s} {'theta acc':>11s} {'CPU min':>7s}")
    for r in rows:
        acc = "" if r["theta_acc_first"] is None else f"{r['theta_acc_first']:.2f}->{r['theta_acc_last']:.2f}"
        print(f"{r['name']:22s} {r['subset']:6d} {fmt_signal(r['signal_median']):>7s} {r['entropy']:7.2f} "
              f"{acc:>11s} {r['cpu_s'] / 60:7.1f}")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    doc = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "argv": sys.argv[1:],
           "torch_threads": torch.get_num_threads(), "runs": rows}
    a.json.write_text(json.dumps(doc, indent=1))
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
