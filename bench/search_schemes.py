"""Weight steps only (theta uniform): does the supernet learn under a scheme? Prints windows of train acc,
held-out acc of 5 single paths (BN in train mode), CPU s/step (bench/README.md, "Search quality"). The
result line is also written to ``bench/out/search_schemes.json`` (``--json``).

    python bench/search_schemes.py --table pixel3.json --data digits --subset 600 --width 0.25 --res 8 \\
        --batch 32 --steps 50 --window 10 --paths 9
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch

from fbnet.client import get_table
from fbnet.lut import build_lut
from fbnet.space import get_space
from search.config import SearchConfig
from search.data import load_dataset
from search.trainer import RunOptions, Searcher, search_resolution

OUT = Path(__file__).resolve().parent / "out"  # git-ignored: the benchmarks' outputs by default

p = argparse.ArgumentParser()
p.add_argument("--data", default="fashion-mnist")
p.add_argument("--subset", type=int, default=2000)
p.add_argument("--width", type=float, default=0.5)
p.add_argument("--res", type=int, default=16)
p.add_argument("--steps", type=int, default=60)
p.add_argument("--batch", type=int, default=64)
p.add_argument("--paths", type=int, default=1)
p.add_argument("--weights", default="independent")
p.add_argument("--anchor", action="store_true")
p.add_argument("--sampler", default="single")
p.add_argument("--lr", type=float, default=None)
p.add_argument("--window", type=int, default=20)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--tag", default="")
p.add_argument("--table", required=True)
p.add_argument("--out", default=str(OUT / "search_schemes"), help="the searcher's folder (default: bench/out/search_schemes)")
p.add_argument("--json", type=Path, default=OUT / "search_schemes.json",
               help="write the result here (default: bench/out/search_schemes.json)")
p.add_argument("--sampler-mix", default="sample", help="weight_mix of the gumbel sampler")
a = p.parse_args()
space = get_space("fbnet-cifar")
lut = build_lut(get_table(space=space.name, table_file=a.table), space)
cfg = SearchConfig(
    epochs=10,
    batch_size=a.batch,
    sampler=a.sampler,
    paths=a.paths,
    weights=a.weights,
    anchor=a.anchor,
    weight_mix=a.sampler_mix,
    proxy_width=a.width,
    proxy_resolution=a.res,
    w_lr=a.lr,
    seed=a.seed,
)
ds = load_dataset(a.data, search_resolution(cfg, space), subset=a.subset, seed=a.seed, num_classes=10)
s = Searcher(cfg, space, lut, ds, f"{a.out}/{a.tag}", RunOptions(tensorboard=False))
s.net.train()
torch.manual_seed(a.seed)
from search.dist import loader  # noqa: E402

accs, ces, t_cpu = [], [], 0.0
step = 0
epoch = 0
while step < a.steps:
    for x, y in loader(s.w_ds, a.batch, s.env, a.seed, epoch):
        t = time.process_time()
        ce, ok = s.weight_step(x, y, 5.0)
        t_cpu += time.process_time() - t
        accs.append(ok / len(y))
        ces.append(ce)
        step += 1
        if step >= a.steps:
            break
    epoch += 1
w = a.window
wins = [round(sum(accs[i : i + w]) / len(accs[i : i + w]), 3) for i in range(0, len(accs), w)]
cew = [round(sum(ces[i : i + w]) / len(ces[i : i + w]), 2) for i in range(0, len(ces), w)]
tx, ty = ds.test_x[:500], ds.test_y[:500]
held = []
with torch.no_grad():
    g = torch.Generator().manual_seed(123)
    for i in range(5):
        torch.manual_seed(1000 + i)
        m = s.arch.gumbel_weights(1.0, hard=True)
        ok = sum(
            int((s.net(tx[j : j + 100], m, True).argmax(1) == ty[j : j + 100]).sum()) for j in range(0, len(ty), 100)
        )
        held.append(round(ok / len(ty), 3))
r = dict(
    tag=a.tag,
    args=vars(a),
    win_acc=wins,
    win_ce=cew,
    held_out=held,
    held_mean=round(sum(held) / 5, 3),
    cpu_s_per_step=round(t_cpu / a.steps, 4),
)
print(json.dumps(r, default=str))
a.json.parent.mkdir(parents=True, exist_ok=True)
a.json.write_text(json.dumps(r, indent=1, default=str))
