"""Host transport: the ExecuTorch runtime inside this Python process.

DEVICES.md section 3: the thread pool is sized before any program is loaded (XNNPACK captures it at
load), every ``Program`` stays referenced while its method runs (the method dangles otherwise), and
only the raw ``execute()`` is timed; inputs are copied in outside the timer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path

import torch

from device_agents import sysinfo
from device_agents.protocol import AgentError, NoTimingsError, Provenance, RunnerCrashError, Transport
from fbnet.space import parse_key


def _input_for(key: str, shape: tuple[int, ...] | None) -> torch.Tensor:
    if shape is None:
        shape = parse_key(key).input_shape
    g = torch.Generator().manual_seed(0)
    return torch.randn(*shape, generator=g)


class HostTransport(Transport):
    name = "host"
    fmt = "pte"

    def __init__(self, threads: int = 1, cpu_mask: str | None = None):
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        if threads < 1:
            raise AgentError(f"threads must be >= 1, got {threads}")
        if cpu_mask:
            cpus = sysinfo.cpus_of_mask(cpu_mask)
            avail = os.sched_getaffinity(0)
            if not cpus <= avail:
                raise AgentError(f"CPU mask {cpu_mask} names CPUs {sorted(cpus - avail)} this machine does not offer")
            os.sched_setaffinity(0, cpus)
        self.threads = threads
        self.cpu_mask = cpu_mask
        # Before any load: methods loaded earlier would keep a pointer to the freed pool.
        portable_lib._unsafe_reset_threadpool(threads)
        self._runtime = Runtime.get()
        self._programs: dict[str, object] = {}
        self._methods: dict[str, object] = {}
        self._inputs: dict[str, tuple[torch.Tensor]] = {}
        self.input_shapes: dict[str, tuple[int, ...]] = {}

    def prepare(self, programs: dict[str, Path]) -> None:
        for key, path in programs.items():
            if key in self._methods:
                continue
            try:
                prog = self._runtime.load_program(Path(path))
                meth = prog.load_method("forward")
            except Exception as e:  # noqa: BLE001
                raise AgentError(f"{key}: could not load {path}: {e}") from e
            self._programs[key] = prog  # keep it alive as long as the method
            self._methods[key] = meth
            shape = self.input_shapes.get(key)
            if shape is None and key.startswith("overhead-"):
                shape = tuple(int(d) for d in key.removeprefix("overhead-").split("x"))
            self._inputs[key] = (_input_for(key, shape),)

    def run_once(self, key: str) -> torch.Tensor:
        """One high-level execution (for correctness checks)."""
        return self._methods[key].execute(self._inputs[key])[0]

    def measure(self, keys: Sequence[str], warmup: int, repeats: int,
                on_done: Callable[[str, list[float]], None]) -> None:
        clock = time.perf_counter_ns
        for key in keys:
            raw = self._methods[key]._method
            inp = self._inputs[key]
            try:
                for _ in range(warmup):
                    raw.set_inputs(inp)
                    raw.execute()
                out: list[float] = []
                for _ in range(repeats):
                    raw.set_inputs(inp)
                    t0 = clock()
                    raw.execute()
                    t1 = clock()
                    out.append((t1 - t0) / 1000.0)
            except Exception as e:  # noqa: BLE001
                raise RunnerCrashError(f"{key}: execution failed: {e}") from e
            if not out:
                raise NoTimingsError(f"{key}: no timings")
            on_done(key, out)

    def provenance(self) -> Provenance:
        return Provenance(
            runtime="executorch-xnnpack", runtime_version=version("executorch"),
            build=f"executorch {version('executorch')} pybindings (python)", threads=self.threads,
            cpu_mask=self.cpu_mask or sysinfo.affinity_mask(), host=sysinfo.hostname(),
            device_model=sysinfo.host_cpu_model(), soc=sysinfo.host_cpu_model(), os=sysinfo.host_os(),
            extra={"loadavg": list(os.getloadavg()), "cpus": os.cpu_count()},
        )

    def sensors(self) -> tuple[dict[str, float], dict[str, float]]:
        return sysinfo.host_temps(), sysinfo.host_freqs()

    def close(self) -> None:
        self._methods.clear()
        self._programs.clear()
