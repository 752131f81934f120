"""CPU seconds per weight step (batch 64) and per theta step (batch 16) on Fashion-MNIST, per scheme
(bench/README.md, "Search quality"). Each argument: SearchConfig fields as JSON. One JSON line per
scheme, printed and appended to ``bench/out/search_scheme_cost.jsonl``.

    python bench/search_scheme_cost.py pixel3.json '{"sampler": "gumbel", "proxy_width": 0.25, "proxy_resolution": 8}'
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402,F401

from fbnet.client import get_table
from fbnet.lut import build_lut
from fbnet.space import get_space
from search.config import SearchConfig
from search.data import load_dataset
from search.trainer import RunOptions, Searcher, search_resolution

OUT = Path(__file__).resolve().parent / "out"  # git-ignored: the benchmarks' outputs by default

space = get_space("fbnet-cifar")
lut = build_lut(get_table(space=space.name, table_file=sys.argv[1]), space)
for spec in sys.argv[2:]:
    kw = json.loads(spec)
    cfg = SearchConfig(**kw)
    ds = load_dataset("fashion-mnist", search_resolution(cfg, space), subset=400, seed=0, num_classes=10)
    s = Searcher(cfg, space, lut, ds, OUT / "search_scheme_cost", RunOptions(tensorboard=False))
    x, y = ds.train_x[:64], ds.train_y[:64]
    w, t = [], []
    for _ in range(4):
        a = time.process_time()
        s.weight_step(x, y, 1.0)
        w.append(time.process_time() - a)
        a = time.process_time()
        s.theta_step(x[:16], y[:16], 1.0)
        t.append(time.process_time() - a)
    r = dict(
        cfg=kw,
        w_step_s=round(min(w[1:]), 4),
        t_step_s=round(min(t[1:]), 4),
        run_estimate_s=round(250 * min(w[1:]) + 225 * min(t[1:]), 1),
    )
    print(json.dumps(r), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "search_scheme_cost.jsonl", "a") as f:
        f.write(json.dumps(r) + "\n")
