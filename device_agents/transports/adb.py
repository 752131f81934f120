"""adb transport: a runner on an Android phone (DEVICES.md section 1).

Pushes the runner and every program once under ``/data/local/tmp/fbnet/``. Two runners:

- **our fbnet-runner** (device_agents/runner, built for arm64 by android/build_runner.sh): one
  process per round set (``measure_rounds``): the plan (round orders), threads and CPU mask go in,
  one JSON line per (round, op) comes out on stdout, whichever PAL its logs use.
- **upstream's executor_runner** (so nobody has to rebuild to profile): one process per op
  (``--num_executions`` = warm-up + timed, so warm-up and timing share the process), pinned with
  ``taskset``; the ``Iteration i of N: X ms`` lines are parsed from the shell's output or, for a
  runner that logs to logcat (the Android PAL), from ``logcat -d -s ExecuTorch:I``.

The binary tells them apart (:func:`device_agents.transports.runner.is_fbnet_runner`).
"""

from __future__ import annotations

import hashlib
import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path

from device_agents import sysinfo
from device_agents.protocol import (
    AgentError,
    DeviceLostError,
    NoTimingsError,
    Provenance,
    RunnerCrashError,
    Transport,
)
from device_agents.transports import runner as rn

DEVICE_DIR = "/data/local/tmp/fbnet"
ITERATION = re.compile(r"Iteration (\d+) of (\d+): ([0-9.]+) ms")
_LOST = re.compile(r"device '.*' not found|no devices/emulators found|device offline|device not found|"
                   r"error: closed|device unauthorized|protocol fault|connection reset", re.I)
_SIGNALS = {134: "aborted (SIGABRT)", 137: "killed (SIGKILL)", 139: "segmentation fault (SIGSEGV)"}


def parse_iterations(text: str, total: int) -> list[float]:
    """Per-iteration times (ms) of the last complete run of ``total`` executions in ``text``."""
    its: list[tuple[int, float]] = [(int(i), float(ms)) for i, n, ms in ITERATION.findall(text) if int(n) == total]
    # logcat may hold several runs; take the last sequence 1..total
    starts = [j for j, (i, _) in enumerate(its) if i == 1]
    if starts:
        its = its[starts[-1]:]
    return [ms for _, ms in its]


class AdbTransport(Transport):
    name = "adb"
    fmt = "pte"

    def __init__(self, runner: Path, serial: str | None = None, adb: str = "adb", threads: int = 1,
                 cpu_mask: str | None = None, timeout_s: float = 600.0, keep: bool = False):
        self.runner = Path(runner)
        if not self.runner.is_file():
            raise AgentError(f"runner {runner}: no such file (build it with device_agents/android/build_runner.sh)")
        if cpu_mask:
            sysinfo.cpus_of_mask(cpu_mask)  # validates the hex
        self.serial, self.adb, self.threads, self.cpu_mask = serial, adb, threads, cpu_mask
        self.timeout_s, self.keep = timeout_s, keep
        self.remote: dict[str, str] = {}
        self.use_logcat = False
        self.ours = rn.is_fbnet_runner(self.runner)
        self.runner_info: dict | None = None
        self.events: list[dict] = []  # fbnet-runner's per-round sensor reads and reference medians
        self._props: dict[str, str] | None = None
        state = self._adb(["get-state"], what="adb get-state").stdout.strip()
        if state != "device":
            raise DeviceLostError(f"adb: device {serial or '(default)'} is {state or 'not ready'}")

    # -- adb plumbing ---------------------------------------------------------------------
    def _cmd(self, args: list[str]) -> list[str]:
        return [self.adb, *(["-s", self.serial] if self.serial else []), *args]

    def _adb(self, args: list[str], what: str, check: bool = True) -> subprocess.CompletedProcess:
        try:
            p = subprocess.run(self._cmd(args), capture_output=True, text=True, timeout=self.timeout_s)
        except FileNotFoundError as e:
            raise AgentError(f"adb not found ({self.adb}); install platform-tools or name the adb executable") from e
        except subprocess.TimeoutExpired as e:
            raise AgentError(f"{what}: no answer from adb within {self.timeout_s:.0f} s") from e
        out = (p.stdout or "") + (p.stderr or "")
        if p.returncode != 0 and _LOST.search(out):
            raise DeviceLostError(f"adb: device {self.serial or '(default)'} lost during {what}: {_last(out)}")
        if check and p.returncode != 0:
            raise AgentError(f"{what} failed (exit {p.returncode}): {_last(out)}")
        return p

    def shell(self, command: str, what: str, check: bool = True) -> subprocess.CompletedProcess:
        return self._adb(["shell", command], what=what, check=check)

    # -- transport ------------------------------------------------------------------------
    def prepare(self, programs: dict[str, Path]) -> None:
        self.shell(f"mkdir -p {DEVICE_DIR}", "mkdir")
        self._adb(["push", str(self.runner), f"{DEVICE_DIR}/{self._exe}"], "push runner")
        self.shell(f"chmod 755 {DEVICE_DIR}/{self._exe}", "chmod runner")
        paths = [Path(p) for p in programs.values()]
        for i in range(0, len(paths), 64):
            self._adb(["push", "--sync", *map(str, paths[i:i + 64]), f"{DEVICE_DIR}/"], "push programs")
        self.remote.update({k: f"{DEVICE_DIR}/{Path(p).name}" for k, p in programs.items()})
        self._adb(["logcat", "-c"], "logcat -c", check=False)
        if self.ours:
            v = self.shell(f"{DEVICE_DIR}/{self._exe} --version", "fbnet-runner --version", check=False)
            self.runner_info = rn.runner_version(v.stdout or "")
            self._push_text("programs.txt", "".join(f"{k}={Path(p).name}\n" for k, p in programs.items()))
            cmd = f"cd {DEVICE_DIR} && ./{self._exe} {self._our_flags()} --load-only --programs=programs.txt"
            self._stream(cmd, lambda *a: None, 0, 0, "loading the programs on the phone")

    @property
    def _exe(self) -> str:
        return "fbnet-runner" if self.ours else "executor_runner"

    def _our_flags(self) -> str:
        return shlex.join([f"--threads={self.threads}", *([f"--cpu-mask={self.cpu_mask}"] if self.cpu_mask else [])])

    def _push_text(self, name: str, text: str) -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            local = Path(d) / name
            local.write_text(text)
            self._adb(["push", str(local), f"{DEVICE_DIR}/{name}"], f"push {name}")

    def _stream(self, command: str, on_done, expected: int, total: int, where: str) -> None:
        try:
            rn.stream(self._cmd(["shell", command]), on_done, expected, total, where=f"adb, {where}",
                      timeout_s=self.timeout_s, log=self.events)
        except FileNotFoundError as e:
            raise AgentError(f"adb not found ({self.adb}); install platform-tools or name the adb executable") from e
        except AgentError as e:
            if _LOST.search(str(e)):
                raise DeviceLostError(f"adb: device {self.serial or '(default)'} lost: {e}") from e
            raise

    def measure_rounds(self, orders, warmup, repeats, on_done, cooldown_s: float = 0.0) -> None:
        if not self.ours:
            return super().measure_rounds(orders, warmup, repeats, on_done, cooldown_s)
        keys = list(dict.fromkeys(k for order in orders for k in order))
        self._push_text("programs.txt", "".join(f"{k}={Path(self.remote[k]).name}\n" for k in keys))
        self._push_text("plan.txt", rn.plan_text(orders))
        cmd = (f"cd {DEVICE_DIR} && ./{self._exe} {self._our_flags()} --warmup={warmup} --repeats={repeats} "
               f"--plan=plan.txt --programs=programs.txt --cooldown-ms={cooldown_s * 1000:g} --sensors --sysfs=/sys/")
        self._stream(cmd, on_done, repeats, sum(len(o) for o in orders),
                     f"{len(orders)} round(s) of {len(keys)} programs")

    def _run_cmd(self, key: str, total: int) -> str:
        runner = [f"{DEVICE_DIR}/executor_runner", f"--model_path={self.remote[key]}",
                  f"--num_executions={total}", f"--cpu_threads={self.threads}", "--print_output=none"]
        if self.cpu_mask:
            runner = ["taskset", self.cpu_mask, *runner]
        return shlex.join(runner)

    def measure(self, keys: Sequence[str], warmup: int, repeats: int,
                on_done: Callable[[str, list[float]], None]) -> None:
        if self.ours:
            return self.measure_rounds([list(keys)], warmup, repeats, lambda r, k, xs: on_done(k, xs))
        total = warmup + repeats
        for key in keys:
            if self.use_logcat:
                self._adb(["logcat", "-c"], "logcat -c", check=False)
            p = self.shell(self._run_cmd(key, total), what=f"executor_runner on {key}", check=False)
            out = (p.stdout or "") + (p.stderr or "")
            if p.returncode != 0:
                why = _SIGNALS.get(p.returncode, f"exit {p.returncode}")
                raise RunnerCrashError(f"executor_runner crashed on {key}: {why}: {_last(out)}")
            ms = parse_iterations(out, total)
            if not ms:
                log = self._adb(["logcat", "-d", "-s", "ExecuTorch:I"], "logcat -d", check=False)
                ms = parse_iterations(log.stdout or "", total)
                if ms:
                    self.use_logcat = True  # this runner logs through the Android PAL
            if len(ms) != total:
                raise NoTimingsError(
                    f"executor_runner printed {len(ms)} of {total} 'Iteration i of N' timings for {key} "
                    "(neither on its output nor in logcat; is it built with EXECUTORCH_ENABLE_LOGGING=ON?): "
                    f"{_last(out) or 'no output'}")
            on_done(key, [x * 1000.0 for x in ms[warmup:]])

    def props(self) -> dict[str, str]:
        if self._props is None:
            text = self.shell("getprop", "getprop").stdout
            self._props = dict(re.findall(r"^\[([^\]]+)\]: \[([^\]]*)\]", text, re.M))
        return self._props

    def provenance(self) -> Provenance:
        p = self.props()
        soc = p.get("ro.soc.model") or p.get("ro.board.platform") or p.get("ro.product.board")
        os_ = f"Android {p.get('ro.build.version.release', '?')} (API {p.get('ro.build.version.sdk', '?')})"
        digest = hashlib.sha256(self.runner.read_bytes()).hexdigest()
        if self.ours and self.runner_info:
            info = self.runner_info
            rt_version = str(info.get("executorch", "?")).split("+")[0]
            build = f"fbnet-runner {info.get('version')} ({info.get('build')}) sha256:{digest}"
        else:  # upstream's runner does not say its version: build_runner.sh writes it beside the binary
            rt_version = self.runner_version()
            build = f"executor_runner {self.runner.name} sha256:{digest}; host executorch {version('executorch')}"
        # the configuration names the binary: its version and sha256 (two builds never share a table)
        return Provenance(
            runtime="executorch-xnnpack", runtime_version=f"{rt_version[:40]} sha256:{digest[:12]}", build=build,
            threads=self.threads,
            cpu_mask=self.cpu_mask, host=self.serial or p.get("ro.serialno"),
            device_model=" ".join(x for x in (p.get("ro.product.manufacturer"), p.get("ro.product.model")) if x)
            or None, soc=soc, os=os_,
            extra={"runner": self.runner_info or {"runner": "executor_runner"}, "board": p.get("ro.product.board"), "abi": p.get("ro.product.cpu.abi"),
                   "fingerprint": p.get("ro.build.fingerprint"), "max_freqs_mhz": self._max_freqs()},
        )

    def runner_version(self) -> str:
        """The runner binary's ExecuTorch version: ``<runner>.version`` beside it (build_runner.sh writes
        it), else 'unknown'; the run's runtime_version adds the binary's sha256 either way, so two
        different binaries never share a configuration."""
        side = self.runner.with_name(self.runner.name + ".version")
        text = side.read_text().strip().splitlines()[0].strip() if side.is_file() else ""
        return text or "unknown"

    def _max_freqs(self) -> dict[str, float]:
        return self._sysfs_freqs("cpuinfo_max_freq")

    def _sysfs_freqs(self, name: str) -> dict[str, float]:
        cmd = (f'for f in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/{name}; do '
               f'[ -r "$f" ] && echo "$f $(cat $f)"; done; true')
        text = self.shell(cmd, "read cpufreq", check=False).stdout or ""
        lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if " " in line)
        return sysinfo.parse_freqs(lines)

    def sensors(self) -> tuple[dict[str, float], dict[str, float]]:
        cmd = ('for z in /sys/class/thermal/thermal_zone*; do '
               '[ -r "$z/temp" ] && echo "${z##*/} $(cat $z/type) $(cat $z/temp)"; done; true')
        text = self.shell(cmd, "read thermal zones", check=False).stdout or ""
        zones = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 3:
                zones[parts[0]] = (" ".join(parts[1:-1]), parts[-1])
        return sysinfo.parse_temps(zones), self._sysfs_freqs("scaling_cur_freq")

    def close(self) -> None:
        if self.keep:
            return
        try:
            self.shell(f"rm -rf {DEVICE_DIR}", "cleanup", check=False)
        except AgentError:
            pass  # the device is gone; nothing to clean


def _last(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
