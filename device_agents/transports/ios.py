"""iOS transport: Core ML programs timed by the CoreMLBench app on an iPhone, driven from a Mac.

DEVICES.md section 4.2: ``xcrun coremlcompiler compile`` each ``.mlpackage`` once, copy the
``.mlmodelc`` folders and a ``job.json`` into the app's data container with ``xcrun devicectl
device copy to``, launch the app (``process launch --console --terminate-existing``), and copy
``Documents/results.json`` back. One launch per round keeps warm-up and timing in one process and
lets the protocol shuffle the op order per round.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path

from device_agents.protocol import (
    AgentError,
    DeviceLostError,
    NoTimingsError,
    Provenance,
    RunnerCrashError,
    Transport,
)

UNITS = {"cpu": "cpuOnly", "gpu": "cpuAndGPU", "ane": "cpuAndNeuralEngine", "all": "all"}
THERMAL = {"nominal": 0.0, "fair": 1.0, "serious": 2.0, "critical": 3.0}
_LOST = re.compile(r"device was not found|not connected|is locked|unlock|CoreDeviceError error 1000|"
                   r"no longer connected|device disconnected", re.I)


class IosTransport(Transport):
    name = "ios"
    fmt = "mlpackage"

    def __init__(self, udid: str, bundle_id: str, compute_units: str = "cpu", xcrun: str = "xcrun",
                 work_dir: Path | str = ".fbnet-ios", timeout_s: float = 1800.0):
        if compute_units not in UNITS:
            raise AgentError(f"compute units {compute_units!r}: use one of {', '.join(UNITS)}")
        self.udid, self.bundle_id, self.units, self.xcrun = udid, bundle_id, compute_units, xcrun
        self.work = Path(work_dir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.timeout_s = timeout_s
        self.remote: dict[str, str] = {}
        self.thermal: str | None = None
        self.app: dict = {}
        self._info: dict | None = None

    def _run(self, args: list[str], what: str) -> subprocess.CompletedProcess:
        try:
            p = subprocess.run([self.xcrun, *args], capture_output=True, text=True, timeout=self.timeout_s)
        except FileNotFoundError as e:
            raise AgentError(f"xcrun not found ({self.xcrun}): the ios transport runs on a Mac with Xcode") from e
        except subprocess.TimeoutExpired as e:
            raise AgentError(f"{what}: no answer within {self.timeout_s:.0f} s") from e
        if p.returncode != 0:
            out = (p.stderr or "") + (p.stdout or "")
            last = _last(out)
            if _LOST.search(out):
                raise DeviceLostError(f"iPhone {self.udid} unavailable during {what}: {last}")
            raise AgentError(f"{what} failed (exit {p.returncode}): {last}")
        return p

    def _container(self) -> list[str]:
        return ["--device", self.udid, "--domain-type", "appDataContainer", "--domain-identifier", self.bundle_id]

    def copy_to(self, src: Path, dst: str) -> None:
        self._run(["devicectl", "device", "copy", "to", *self._container(), "--source", str(src),
                   "--destination", dst], f"copy {src.name} to the app")

    def copy_from(self, src: str, dst: Path) -> None:
        self._run(["devicectl", "device", "copy", "from", *self._container(), "--source", src,
                   "--destination", str(dst)], f"copy {src} from the app")

    def prepare(self, programs: dict[str, Path]) -> None:
        for key, pkg in programs.items():
            pkg = Path(pkg)
            # compiled next to the exported package's cache folder: same fingerprint, compiled once
            out = self.work / "compiled" / pkg.parent.name
            mlmodelc = out / f"{pkg.stem}.mlmodelc"
            if not mlmodelc.exists():
                out.mkdir(parents=True, exist_ok=True)
                self._run(["coremlcompiler", "compile", str(pkg), str(out)], f"coremlcompiler compile {pkg.name}")
                if not mlmodelc.is_dir():
                    raise AgentError(f"coremlcompiler did not produce {mlmodelc}")
            dst = f"Documents/models/{key}.mlmodelc"
            self.copy_to(mlmodelc, dst)
            self.remote[key] = f"models/{key}.mlmodelc"

    def measure(self, keys: Sequence[str], warmup: int, repeats: int,
                on_done: Callable[[str, list[float]], None]) -> None:
        job = {"models": [self.remote[k] for k in keys], "compute_units": [UNITS[self.units]],
               "warmup": warmup, "iters": repeats, "rounds": 1, "samples": True}
        job_path = self.work / "job.json"
        job_path.write_text(json.dumps(job, indent=1))
        self.copy_to(job_path, "Documents/job.json")
        self._run(["devicectl", "device", "process", "launch", "--device", self.udid, "--terminate-existing",
                   "--console", self.bundle_id], "launching CoreMLBench")
        res_path = self.work / "results.json"
        res_path.unlink(missing_ok=True)
        self.copy_from("Documents/results.json", res_path)
        try:
            res = json.loads(res_path.read_text())
        except (OSError, ValueError) as e:
            raise NoTimingsError(f"CoreMLBench wrote no readable results.json: {e}") from e
        self.thermal = res.get("thermal_after") or self.thermal
        self.app = {k: res.get(k) for k in ("app_version", "device", "os") if res.get(k)}
        rows = {(r.get("model"), r.get("compute_units")): r for r in res.get("results", [])}
        for key in keys:
            row = rows.get((self.remote[key], UNITS[self.units]))
            if row is None:
                raise NoTimingsError(f"CoreMLBench returned no timings for {key}")
            if row.get("error"):
                raise RunnerCrashError(f"CoreMLBench failed on {key}: {row['error']}")
            samples = [float(x) for x in row.get("samples_us") or []]
            if len(samples) != repeats:
                raise NoTimingsError(f"CoreMLBench returned {len(samples)} of {repeats} timings for {key}")
            on_done(key, samples)

    def info(self) -> dict:
        if self._info is None:
            out = self.work / "device-info.json"
            self._run(["devicectl", "device", "info", "details", "--device", self.udid, "--json-output", str(out)],
                      "devicectl device info details")
            self._info = json.loads(out.read_text()).get("result", {})
        return self._info

    def provenance(self) -> Provenance:
        info = self.info()
        dev, hw = info.get("deviceProperties", {}), info.get("hardwareProperties", {})
        osv = dev.get("osVersionNumber", "?")
        return Provenance(
            runtime="coreml", runtime_version=f"iOS {osv}", build=f"CoreMLBench ({self.bundle_id}); "
            f"coremltools {version('coremltools')}", compute_units=self.units, host=self.udid,
            device_model=hw.get("marketingName") or hw.get("productType"), soc=(hw.get("cpuType") or {}).get("name"),
            os=f"iOS {osv}", extra={"product_type": hw.get("productType"), "device_name": dev.get("name")},
        )

    def sensors(self) -> tuple[dict[str, float], dict[str, float]]:
        return ({"thermal_state": THERMAL[self.thermal]} if self.thermal in THERMAL else {}), {}


def _last(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
