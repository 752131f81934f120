"""`make demo`: the whole loop on this machine, from an empty service to a validated architecture.

Starts the profiler service on a SQLite file, registers the host CPU, profiles every op of
fbnet-cifar with ExecuTorch, searches on Fashion-MNIST against that table for a latency target (the
all-candidates Gumbel-softmax supernet on a cheap proxy, a schedule that converges in its time), trains the found
architecture and random architectures of the same predicted latency with the same budget, exports
the found one, measures it whole, uploads the validation and prints predicted vs measured latency
and the final theta entropy. Without Debian's dataset-fashion-mnist (``make demo`` installs it when
it runs as root with apt) it says so and uses scikit-learn's digits. Every step is the command a user would type; a second run reuses the
export cache and is much faster.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fbnet.archfile import read_arch_file  # noqa: E402
from fbnet.client import ServiceClient, get_table  # noqa: E402
from fbnet.lut import build_lut, predict  # noqa: E402
from fbnet.space import get_space  # noqa: E402
from fbnet.space_v2 import is_v2_space  # noqa: E402
from profiler_server.launcher import LocalServer  # noqa: E402
from search.data import FASHION_DIR, FASHION_PACKAGE  # noqa: E402
from search.select import latency_range, random_within  # noqa: E402

sys.path.insert(0, str(REPO / "demo"))
import v2  # noqa: E402  (demo/v2.py: the steps on an FBNetV2 space)

BIN = Path(sys.executable).parent
PIXEL3 = REPO / "tests" / "data" / "hwnasbench" / "pixel3_latency.json"  # HW-NAS-Bench, MIT
console = Console()


def step(n: int, total: int, what: str) -> None:
    console.rule(f"[bold cyan]{n}/{total}[/bold cyan] {what}")


def sh(*args: str | Path, env: dict | None = None) -> None:
    """Run one of the project's commands in the foreground (its own progress bars show)."""
    cmd = [str(a) for a in args]
    console.print(f"[dim]$ {' '.join(cmd[:1] and [Path(cmd[0]).name] + cmd[1:])}[/dim]", highlight=False)
    # TQDM_DISABLE: coremltools' MIL pipeline progress bars stay out of the demo's log
    r = subprocess.run(cmd, env={**os.environ, "TQDM_DISABLE": "1", **(env or {})})
    if r.returncode != 0:
        console.print(f"[red]demo stopped: `{Path(cmd[0]).name} {cmd[1]}` exited with {r.returncode}[/red]")
        raise SystemExit(r.returncode)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "demo-out", help="where the database, results and plots go")
    p.add_argument("--cache-dir", type=Path, default=REPO / ".fbnet-cache", help="export cache (kept between runs)")
    p.add_argument("--space", default="fbnet-cifar")
    p.add_argument("--subset", type=int, default=1000, help="Fashion-MNIST training images for the search")
    p.add_argument("--epochs", type=int, default=10, help="search epochs (tau anneals 5 -> 0.087 over them)")
    p.add_argument("--target", type=float, default=0.35,
                   help="latency target as a fraction of the host table's range (fastest .. slowest arch)")
    p.add_argument("--randoms", type=int, default=2, help="random archs of the found one's latency to train too")
    p.add_argument("--child-epochs", type=int, default=2)
    p.add_argument("--child-subset", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="fashion-mnist")
    v2 = p.add_argument_group("v2 spaces (--space fbnetv2-cifar): the sampled profile")
    v2.add_argument("--budget", type=int, default=120, help="grid ops to measure (the service fits the rest)")
    v2.add_argument("--batch", type=int, default=40, help="ops per planned batch")
    v2.add_argument("--design", type=int, default=80, help="ops of the space-filling design before adaptive batches")
    a = p.parse_args()
    if a.data == "fashion-mnist" and not FASHION_DIR.is_dir():
        console.print(f"[yellow]Fashion-MNIST is not installed ({FASHION_DIR}; `apt-get install {FASHION_PACKAGE}` "
                      f"as root, or `make demo` does it): this demo uses scikit-learn's digits instead[/yellow]")
        a.data = "digits"
    return a


@dataclass
class Demo:
    """What the steps share: the options, the output folders, the service, the device's token, the timings."""

    a: argparse.Namespace
    out: Path
    cache: Path
    server: LocalServer
    device: str = "host-cpu"
    token: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def timed(self, name: str, fn) -> None:
        s = time.monotonic()
        fn()
        self.timings[name] = time.monotonic() - s

    def agent(self, command: str, *args) -> None:
        """An fbnet-agent command against the demo's service, as the device."""
        sh(BIN / "fbnet-agent", command, "--server", self.server.url, "--token", self.token, *args,
           env={"FBNET_SERVER": self.server.url, "FBNET_AGENT_TOKEN": self.token})

    @property
    def common(self) -> list[str]:
        return ["--device", self.device, "--space", self.a.space, "--cache-dir", str(self.cache / "exports")]


TOTAL = 8


def register(d: Demo) -> None:
    step(2, TOTAL, "register the host CPU as a device")
    import platform

    d.token = d.server.create_device(d.device, platform="linux", runtime="executorch-xnnpack",
                                     model=platform.processor() or platform.machine(), os=platform.platform())
    console.print(f"device [bold]{d.device}[/bold] registered; its agent token is shown once: {d.token[:6]}…")


def profile(d: Demo):
    """Profile every op; a run whose reference ops moved too much is marked unstable and feeds no table,
    so profile again (twice at most). Returns the host table's latency matrix."""
    step(3, TOTAL, f"profile every op of {d.a.space} on the host with ExecuTorch (XNNPACK, 1 thread)")
    d.timed("profile", lambda: d.agent("profile", "--transport", "host", *d.common))
    table = get_table(space=d.a.space, server=d.server.url, device=d.device, cache_dir=d.cache / "tables")
    for _ in range(2):
        if table.configuration is not None:
            break
        console.print("[yellow]the profile run was marked unstable (its reference ops moved more than the "
                      "threshold between rounds: the machine was busy); profiling again[/yellow]")
        d.timed("profile again", lambda: d.agent("profile", "--transport", "host", *d.common))
        table = get_table(space=d.a.space, server=d.server.url, device=d.device, cache_dir=d.cache / "tables")
    return build_lut(table, get_space(d.a.space))


def search(d: Demo, lut):
    a = d.a
    lo, hi = latency_range(lut)
    target_ms = (lo + a.target * (hi - lo)) / 1000
    step(4, TOTAL, f"FBNet search on {a.data} with the host table, target {target_ms:.3f} ms "
                   f"({100 * a.target:.0f} % of the range {lo / 1000:.3f}..{hi / 1000:.3f} ms)")
    d.timed("search", lambda: sh(
        BIN / "fbnet-search", "run", "--server", d.server.url, "--device", d.device, "--space", a.space,
        "--data", a.data, "--epochs", a.epochs, "--target-ms", f"{target_ms:.4f}", "--subset", a.subset,
        "--seed", a.seed, "--out", d.out / "search", "--cache-dir", d.cache / "tables"))
    return read_arch_file(d.out / "search")


def train(d: Demo, lut, found) -> list[tuple]:
    """The found architecture and random ones of its predicted latency, each with the same budget:
    (architecture, predicted us, test accuracy) per child, the found one first."""
    a = d.a
    step(5, TOTAL, f"train the found architecture and {a.randoms} random ones of the same latency (+-5 %), "
                   f"same budget")
    pred = predict(lut, found.architecture)["latency_us"]
    randoms = random_within(lut, 0.95 * pred, 1.05 * pred, a.randoms, seed=a.seed)
    trained = []
    for i, arch in enumerate([found.architecture, *randoms]):
        child_dir = d.out / ("child" if i == 0 else f"random-{i}")
        d.timed(f"train {i}", lambda arch=arch, child_dir=child_dir: sh(
            BIN / "fbnet-search", "train", "--arch", ",".join(arch.blocks), "--space", a.space, "--data", a.data,
            "--epochs", a.child_epochs, "--subset", a.child_subset, "--seed", a.seed, "--out", child_dir))
        trained.append((arch, predict(lut, arch)["latency_us"],
                        json.loads((child_dir / "child.json").read_text())["test_acc"]))
    return trained


def export(d: Demo) -> None:
    step(6, TOTAL, "export the trained architecture (.pte for ExecuTorch, .mlpackage for Core ML)")
    weights = d.out / "child" / "child.pt"
    d.timed("export", lambda: (
        sh(BIN / "fbnet-search", "export", "--from", d.out / "search", "--weights", weights,
           "--space", d.a.space, "--format", "pte", "--out", d.out / "found.pte"),
        sh(BIN / "fbnet-search", "export", "--from", d.out / "search", "--weights", weights,
           "--space", d.a.space, "--format", "mlpackage", "--out", d.out / "found.mlpackage"),
    ))


def validate(d: Demo, arch_text: str) -> None:
    refs = "3 random archs" if is_v2_space(d.a.space) else "FBNet-A/B/C and 3 random archs"
    step(7, TOTAL, f"measure it whole on the host (plus {refs}) and upload")
    d.timed("validate", lambda: d.agent("validate", *d.common, "--transport", "host", "--arch", arch_text,
                                        "--archs", 3, "--seed", d.a.seed))


def plots(d: Demo) -> tuple[Path, dict]:
    """The service's figures, and its summary of the device's validations."""
    step(8, TOTAL, "plots: the host table, predicted vs measured, host vs Pixel 3 (HW-NAS-Bench) per op")
    folder = d.out / "plots"
    folder.mkdir()
    space, device = d.a.space, d.device
    with httpx.Client(base_url=d.server.url, timeout=60) as c:
        # A second device for the per-op ratio figure (the paper's iPhone X vs Samsung S8 plot):
        # the HW-NAS-Bench Pixel 3 table, imported as an external table.
        admin = {"Authorization": f"Bearer {d.server.admin_token}"}
        c.post("/devices", json={"name": "pixel3", "platform": "android", "runtime": "tflite (HW-NAS-Bench)",
                                 "model": "Pixel 3"}, headers=admin).raise_for_status()
        c.post("/tables/pixel3/import", params={"format": "hwnasbench", "space": space},
               content=PIXEL3.read_bytes(), headers=admin).raise_for_status()
        for name, path in [("table-heatmap.png", f"/plots/table/{device}.png?space={space}"),
                           ("validations.png", f"/plots/validations/{device}.png?space={space}"),
                           ("host-vs-pixel3.png", f"/plots/compare.png?space={space}&a={device}&b=pixel3")]:
            r = c.get(path)
            r.raise_for_status()
            (folder / name).write_bytes(r.content)
        with ServiceClient(d.server.url, timeout_s=60) as sc:  # the summary with every page of validations
            summary = sc.validations(device, space).model_dump(mode="json")
    return folder, summary


def v1_rows(d: Demo, found, trained: list[tuple], summary: dict) -> list[tuple[str, str]]:
    a, out, device = d.a, d.out, d.device
    mine = next(v for v in summary["validations"] if v["arch"] == found.arch)
    child = json.loads((out / "child" / "child.json").read_text())
    rows: list[tuple[str, str]] = []
    rows.append(("device / space", f"{device} / {a.space}  (table {found.table_version})"))
    rows.append(("found architecture", ",".join(found.arch)))
    rows.append(("search", f"target {1000 * found.target_ms:.0f} us, predicted {found.predicted_latency_us:.0f} us "
                        f"({100 * (found.predicted_latency_us / (1000 * found.target_ms) - 1):+.1f} %); final theta "
                        f"entropy {found.theta_entropy:.2f} nats (uniform 2.20) after {found.theta_steps} theta steps"))
    rows.append(("child accuracy", f"{100 * child['test_acc']:.1f}% on {a.data} test "
                                f"({a.child_epochs} epochs, {a.child_subset} images)"))
    rows.append(("found vs random\n(same latency, same budget)", "\n".join(
        f"{'found ' if i == 0 else 'random'} {lat:7.0f} us  acc {100 * acc:5.1f}%  {','.join(arch.blocks)}"
        for i, (arch, lat, acc) in enumerate(trained))))
    scale = mine["extra"].get("drift_scale") or 1.0
    rows.append(("predicted latency", f"{mine['predicted_us']:.0f} us  " + (
        "(the table's prediction)" if abs(scale - 1) < 1e-9 else
        f"(the table's {mine['extra']['table_predicted_us']:.0f} us x {scale:.3f}: the whole-model drift validate "
        f"measured on the table's calibration models)")))
    rows.append(("measured latency", f"{mine['measured_us']:.0f} us  (whole .pte, median of {mine['n']})"))
    drift = mine["extra"].get("drift")
    rows.append(("error", f"{mine['error_pct']:+.1f}%" + ("" if drift is None else
              f"  (the host ran {100 * (drift - 1):+.1f}% vs. when it was profiled, from re-timed reference ops)")))
    rows.append(("all validations", f"{summary['count']} archs: MAPE {summary['mape']:.1f}%, "
                                 f"within ±10% {100 * summary['within_10pct']:.0f}%, "
                                 f"Kendall tau {summary['kendall_tau']:.2f}"))
    return rows


def report(d: Demo, rows: list[tuple[str, str]], folder: Path, t0: float) -> None:
    out, device = d.out, d.device
    t = Table(title="fbnet-lut demo: the loop closed on this machine", show_header=False)
    t.add_column(style="bold")
    t.add_column(overflow="fold")  # a v2 architecture's text has no spaces to wrap at
    for row in rows:
        t.add_row(*row)
    t.add_row("plots", "\n".join(str(p) for p in sorted(folder.glob("*.png"))))
    t.add_row("exports", f"{out / 'found.pte'}\n{out / 'found.mlpackage'}")
    t.add_row("wall time", f"{time.monotonic() - t0:.0f} s  ("
              + ", ".join(f"{k} {v:.0f} s" for k, v in d.timings.items()) + ")")
    console.print(t)
    console.print(Panel.fit(f"service stopped; everything is under {out}\nsee it in a browser: {BIN / 'fbnet-server'} "
                            f"serve --db sqlite:///{out / 'fbnet.db'} --port 8000\n  then open http://127.0.0.1:8000/ui/"
                            f"devices/{device}  ({device}, its table{'' if is_v2_space(d.a.space) else ', the validations, ' + device + ' vs pixel3'})",
                            style="green"))


def main() -> None:
    a = parse_args()
    t0 = time.monotonic()
    out = a.out.resolve()
    if out.exists():
        shutil.rmtree(out)  # a fresh service each run; the export cache lives elsewhere
    out.mkdir(parents=True)
    step(1, TOTAL, "start the profiler service on a SQLite file")
    server = LocalServer(f"sqlite:///{out / 'fbnet.db'}", out / "server").start()
    console.print(f"service at {server.url}  (database {out / 'fbnet.db'}, log {server.log_path})")
    d = Demo(a, out, a.cache_dir.resolve(), server)
    try:
        register(d)
        if is_v2_space(a.space):
            rows, folder = run_v2(d)
        else:
            lut = profile(d)
            found = search(d, lut)
            trained = train(d, lut, found)
            export(d)
            validate(d, ",".join(found.arch))
            folder, summary = plots(d)
            rows = v1_rows(d, found, trained, summary)
    finally:
        server.stop()
    report(d, rows, folder, t0)


def run_v2(d: Demo) -> tuple[list[tuple[str, str]], Path]:
    """Steps 3-8 on a v2 space (demo/v2.py): sampled profile, DMaskingNAS search, children, export,
    whole-model validation against the grid, the service's figures."""
    table = v2.profile(d, step, console)
    cost = v2.cost_of(d)
    found = v2.search(d, cost, step, sh, BIN)
    trained = v2.train(d, cost, found, step, sh, BIN)
    export(d)
    validate(d, found.architecture.to_text())
    folder, summary = v2.plots(d, step)
    return v2.report_rows(d, table, found, trained, summary), folder


if __name__ == "__main__":
    main()
