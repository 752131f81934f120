"""Native host transport: our C++ ``fbnet-runner`` on this machine (``--transport native``).

One runner process per round set: it loads every program once, sets its threads and CPU affinity
itself and times the rounds in the order the protocol chose. The Python host transport
(``--transport host``) times the same programs through the pybindings; bench/profile_cost.py
compares the two.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from device_agents import sysinfo
from device_agents.protocol import AgentError, Provenance, Transport
from device_agents.transports import runner as rn


class NativeTransport(Transport):
    name = "native"
    fmt = "pte"

    def __init__(self, runner: Path | None = None, threads: int = 1, cpu_mask: str | None = None,
                 timeout_s: float | None = None, sensors: bool = True):
        self.runner = Path(runner) if runner else rn.default_runner()
        if not self.runner.is_file():
            raise AgentError(f"runner {self.runner}: no such file (build it with `make runner`)")
        if not rn.is_fbnet_runner(self.runner):
            raise AgentError(f"runner {self.runner} is not an fbnet-runner (the native transport runs our own runner)")
        if threads < 1:
            raise AgentError(f"threads must be >= 1, got {threads}")
        if cpu_mask:
            cpus = sysinfo.cpus_of_mask(cpu_mask)
            if not cpus <= os.sched_getaffinity(0):
                raise AgentError(f"CPU mask {cpu_mask} names CPUs this machine does not offer")
        self.threads, self.cpu_mask, self.timeout_s, self.sensors_on = threads, cpu_mask, timeout_s, sensors
        self.programs: dict[str, Path] = {}
        self.input_shapes: dict[str, tuple[int, ...]] = {}  # the runner reads shapes from the programs
        self._tmp = tempfile.TemporaryDirectory(prefix="fbnet-native-")
        self.info = self._version()
        self.events: list[dict] = []  # the runner's per-round sensor reads and reference medians

    def _version(self) -> dict:
        import subprocess

        p = subprocess.run([str(self.runner), "--version"], capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise AgentError(f"runner {self.runner} --version failed (exit {p.returncode}): {p.stderr.strip()[-200:]}")
        return rn.runner_version(p.stdout)

    def _base(self) -> list[str]:
        cmd = [str(self.runner), f"--threads={self.threads}"]
        if self.cpu_mask:
            cmd.append(f"--cpu-mask={self.cpu_mask}")
        return cmd

    def _program_list(self, keys) -> str:
        path = Path(self._tmp.name) / "programs.txt"
        path.write_text("".join(f"{k}={self.programs[k]}\n" for k in keys))
        return str(path)

    def prepare(self, programs: dict[str, Path]) -> None:
        """Every program must load in the runner before anything is timed (bad files fail here)."""
        self.programs.update({k: Path(p).resolve() for k, p in programs.items()})
        cmd = [*self._base(), "--load-only", f"--programs={self._program_list(programs)}"]
        rn.stream(cmd, lambda *a: None, 0, 0, where="loading the programs", timeout_s=self.timeout_s)

    def measure(self, keys: Sequence[str], warmup: int, repeats: int,
                on_done: Callable[[str, list[float]], None]) -> None:
        self.measure_rounds([list(keys)], warmup, repeats, lambda r, k, xs: on_done(k, xs))

    def measure_rounds(self, orders, warmup, repeats, on_done, cooldown_s: float = 0.0) -> None:
        keys = list(dict.fromkeys(k for order in orders for k in order))
        plan = Path(self._tmp.name) / "plan.txt"
        plan.write_text(rn.plan_text(orders))
        cmd = [*self._base(), f"--warmup={warmup}", f"--repeats={repeats}", f"--plan={plan}",
               f"--programs={self._program_list(keys)}", f"--cooldown-ms={cooldown_s * 1000:g}"]
        if self.sensors_on:
            cmd.append("--sensors")
        total = sum(len(o) for o in orders)
        rn.stream(cmd, on_done, repeats, total, where=f"native, {len(orders)} round(s) of {len(keys)} programs",
                  timeout_s=self.timeout_s, log=self.events)

    def provenance(self) -> Provenance:
        digest = hashlib.sha256(self.runner.read_bytes()).hexdigest()[:12]
        return Provenance(
            runtime="executorch-xnnpack", runtime_version=self.info.get("executorch", "?").split("+")[0],
            build=f"fbnet-runner {self.info.get('version')} ({self.info.get('build')}) sha256:{digest}",
            threads=self.threads, cpu_mask=self.cpu_mask or sysinfo.affinity_mask(), host=sysinfo.hostname(),
            device_model=sysinfo.host_cpu_model(), soc=sysinfo.host_cpu_model(), os=sysinfo.host_os(),
            extra={"loadavg": list(os.getloadavg()), "cpus": os.cpu_count(), "runner": self.info},
        )

    def sensors(self) -> tuple[dict[str, float], dict[str, float]]:
        return sysinfo.host_temps(), sysinfo.host_freqs()

    def close(self) -> None:
        self._tmp.cleanup()
