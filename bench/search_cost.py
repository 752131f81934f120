"""Cost of the FBNet search: supernet step vs its candidates, peak memory, a short Fashion-MNIST search.

1. Overhead ratio: one supernet training step (Gumbel weights, forward + backward through all
   9 x 22 candidates) against the summed forward + backward time of every candidate (and the fixed
   ops) run on its own on the same batch and the same layer inputs. A ratio near 1 means the mixing
   itself costs nothing; the supernet is then simply ~the sum of its candidates.
2. Peak memory: torch.cuda.max_memory_allocated on GPU; on CPU the process's peak RSS
   (resource.ru_maxrss), sampled after each phase.
3. A short search on Fashion-MNIST (``fbnet-search run`` code path), then the argmax child trained
   from scratch: wall times and the child's test accuracy. Plus an extrapolation to a 90-epoch
   search on the full 60k-image training set at the measured images/s.

The table is a real one: ``--table FILE`` (e.g. saved with ``fbnet-search fetch``) or
``--server URL --device NAME``.

    .venv/bin/python bench/search_cost.py --table pixel3.json [--batch 32] [--subset 1000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"  # git-ignored: the benchmarks' outputs by default
sys.path.insert(0, str(REPO))
from fbnet.client import get_table  # noqa: E402
from fbnet.lut import build_lut  # noqa: E402
from fbnet.space import get_space  # noqa: E402
from search.child import train_child  # noqa: E402
from search.config import ChildConfig, SearchConfig  # noqa: E402
from search.data import load_dataset  # noqa: E402
from search.dist import DistEnv  # noqa: E402
from search.supernet import ArchParams, Supernet  # noqa: E402
from search.trainer import RunOptions, run_search, search_resolution  # noqa: E402


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device, repeats: int) -> float:
    fn()  # warm-up
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def overhead(space, batch: int, device, repeats: int) -> dict:
    torch.manual_seed(0)
    net = Supernet(space).to(device).train()
    arch = ArchParams().to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, space.resolution, space.resolution, device=device)
    y = torch.randint(0, space.num_classes, (batch,), device=device)

    def step():
        m = arch.gumbel_weights(5.0)
        loss = F.cross_entropy(net(x, m), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def fwd_bwd():
        m = arch.gumbel_weights(5.0)
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x, m), y).backward()

    t_step = timeit(step, device, repeats)
    t_fwd_bwd = timeit(fwd_bwd, device, repeats)

    # Inputs of every layer from one supernet forward; each candidate then runs alone on them.
    with torch.no_grad():
        m = arch.gumbel_weights(5.0)
        h = net.stem(x)
        inputs = []
        for layer, ml in zip(net.layers, m, strict=True):
            inputs.append(h)
            h = layer(h, ml)
        head_in = h

    def alone(mod, inp):
        def f():
            mod.zero_grad(set_to_none=True)
            i = inp.detach().requires_grad_(True)
            mod(i).float().sum().backward()
        return f

    total = timeit(alone(net.stem, x), device, repeats)
    per_layer = []
    for layer, inp in zip(net.layers, inputs, strict=True):
        t_l = sum(timeit(alone(c, inp), device, repeats) for c in layer.candidates)
        per_layer.append(t_l)
        total += t_l
    total += timeit(alone(torch.nn.Sequential(net.head, net.pool, net.fc), head_in), device, repeats)
    return {"batch": batch, "supernet_step_s": t_step, "supernet_fwd_bwd_s": t_fwd_bwd,
            "candidates_sum_fwd_bwd_s": total, "overhead_ratio": t_fwd_bwd / total,
            "images_per_s_supernet": batch / t_step, "slowest_layer": int(max(range(22), key=per_layer.__getitem__)),
            "peak_mb": peak_mb(device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", help="saved table JSON")
    ap.add_argument("--server")
    ap.add_argument("--device-name", dest="device_name", help="device on the server")
    ap.add_argument("--space", default="fbnet-cifar")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--subset", type=int, default=1000, help="Fashion-MNIST training images for the search")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--warmup-epochs", type=int, default=1)
    ap.add_argument("--child-epochs", type=int, default=5)
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--out", default=str(OUT / "search_cost"), help="the search's run folder (default: bench/out/search_cost)")
    ap.add_argument("--json", dest="json_out", default=str(OUT / "search_cost.json"),
                    help="write every number here (default: bench/out/search_cost.json)")
    a = ap.parse_args()

    device = torch.device("cuda") if torch.cuda.is_available() and not a.cpu else torch.device("cpu")
    space = get_space(a.space)
    table = get_table(space=space.name, server=a.server, device=a.device_name, table_file=a.table)
    lut = build_lut(table, space)
    res: dict = {"host": platform.node(), "device": str(device), "torch": torch.__version__,
                 "threads": torch.get_num_threads(), "space": space.name, "table_device": lut.device}
    if device.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(device)

    res["overhead"] = overhead(space, a.batch, device, a.repeats)

    cfg = SearchConfig(epochs=a.epochs, warmup_epochs=a.warmup_epochs, batch_size=a.batch, seed=0)
    data = load_dataset("fashion-mnist", search_resolution(cfg, space), subset=a.subset, seed=0,
                        num_classes=space.num_classes)
    t = time.perf_counter()
    sr = run_search(cfg, space, lut, data, a.out, RunOptions(env=DistEnv(device=device), tensorboard=False))
    search_s = time.perf_counter() - t
    images = len(data.train_y) * a.epochs  # every image passes once per epoch (80% weights + 20% theta)
    t = time.perf_counter()
    data = load_dataset("fashion-mnist", space.resolution, subset=a.subset, seed=0, num_classes=space.num_classes)
    _, child = train_child(space, sr.arch, data, ChildConfig(epochs=a.child_epochs, batch_size=a.batch, seed=0),
                           device=device)
    child_s = time.perf_counter() - t
    per_image = search_s / images
    full_images = 60_000 * 90
    res["search"] = {
        "data": f"fashion-mnist subset {a.subset}", "epochs": a.epochs, "warmup_epochs": a.warmup_epochs,
        "wall_s": search_s, "images_per_s": images / search_s, "arch": ",".join(sr.arch.blocks),
        "predicted_latency_us": sr.predicted_latency_us, "history": sr.history,
        "child_epochs": a.child_epochs, "child_wall_s": child_s, "child_test_acc": child["test_acc"],
        "child_n_test": child["n_test"], "peak_mb": peak_mb(device),
        "full_search_estimate_h": per_image * full_images / 3600,
        "full_search_estimate_note": "90 epochs x 60k Fashion-MNIST images at the measured images/s, 1 process",
    }
    o = res["overhead"]
    s = res["search"]
    print(f"device {res['device']} ({res.get('gpu', platform.processor() or 'cpu')}), torch {res['torch']}, "
          f"{res['threads']} threads, table {res['table_device']}/{res['space']}")
    rows = [
        (f"supernet step (fwd+bwd+SGD), batch {o['batch']}", f"{o['supernet_step_s'] * 1000:.0f} ms"),
        ("supernet fwd+bwd", f"{o['supernet_fwd_bwd_s'] * 1000:.0f} ms"),
        ("sum of 9x22 candidates + fixed ops, fwd+bwd alone", f"{o['candidates_sum_fwd_bwd_s'] * 1000:.0f} ms"),
        ("overhead ratio (supernet / sum)", f"{o['overhead_ratio']:.2f}"),
        ("supernet images/s (training)", f"{o['images_per_s_supernet']:.1f}"),
        ("peak memory after step timing", f"{o['peak_mb']:.0f} MiB"),
        (f"search: {s['data']}, {s['epochs']} epochs ({s['warmup_epochs']} warm-up)", f"{s['wall_s']:.0f} s"),
        ("search images/s", f"{s['images_per_s']:.1f}"),
        (f"child from scratch, {s['child_epochs']} epochs", f"{s['child_wall_s']:.0f} s"),
        (f"child test accuracy ({s['child_n_test']} images)", f"{s['child_test_acc']:.3f}"),
        ("peak memory overall", f"{s['peak_mb']:.0f} MiB"),
        ("estimate: 90 epochs x 60k images, this device", f"{s['full_search_estimate_h']:.1f} h"),
    ]
    w = max(len(r[0]) for r in rows)
    for k, v in rows:
        print(f"  {k:<{w}}  {v:>10}")
    print(f"  searched arch: {s['arch']} ({s['predicted_latency_us']:.0f} us predicted)")
    if a.json_out:
        Path(a.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json_out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
