"""Our native runner, ``fbnet-runner`` (device_agents/runner/): where it is, how to tell it from
upstream's ``executor_runner``, and how to read its JSON lines.

One runner process takes every program of a round set and the round orders (a plan file: one line
per round, keys separated by blanks, the order :func:`device_agents.protocol.run_protocol` chose) and
prints one ``sample`` line per (round, program). The native and adb transports both start it; this
module turns its output into ``on_done(round, key, samples_us)`` calls and its failures into one
clear :class:`AgentError` after every finished sample was delivered.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

from device_agents.protocol import AgentError, NoTimingsError, RunnerCrashError

MAGIC = b'"runner":"fbnet-runner"'  # a string literal inside every fbnet-runner binary
SOURCE = Path(__file__).resolve().parent.parent / "runner"
REPO = SOURCE.parent.parent


def default_runner() -> Path:
    """``$FBNET_RUNNER``, else the host build of ``make runner`` (build/runner/fbnet-runner)."""
    return Path(os.environ.get("FBNET_RUNNER") or REPO / "build" / "runner" / "fbnet-runner")


def is_fbnet_runner(path: Path) -> bool:
    """True for an fbnet-runner binary (for any target: the marker is a plain string), False for
    upstream's executor_runner or anything else."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return False
    return MAGIC in data


def build_runner(build_dir: Path | None = None, *, quiet: bool = True) -> Path:
    """Configure and build the host runner against the installed executorch wheel (what ``make
    runner`` does); returns the binary. Raises AgentError with the compiler's last lines on failure."""
    import executorch

    build_dir = Path(build_dir or REPO / "build" / "runner")
    pkg = Path(list(executorch.__path__)[0]) / "share" / "cmake"
    gen = ["-G", "Ninja"] if _which("ninja") else []
    for cmd in (["cmake", "-S", str(SOURCE), "-B", str(build_dir), *gen, f"-Dexecutorch_DIR={pkg}"],
                ["cmake", "--build", str(build_dir)]):
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-8:])
            raise AgentError(f"building fbnet-runner failed ({' '.join(cmd[:2])}): {tail}")
    return build_dir / "fbnet-runner"


def _which(name: str) -> bool:
    from shutil import which

    return which(name) is not None


def runner_version(out: str) -> dict:
    """The ``--version`` line (or ``start`` event) of a runner's output."""
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{") and '"runner":"fbnet-runner"' in line.replace(" ", ""):
            try:
                return json.loads(line)
            except ValueError:
                continue
    raise AgentError(f"not an fbnet-runner: its --version printed {out.strip()[:200]!r}")


def plan_text(orders: Iterable[Iterable[str]]) -> str:
    return "".join(" ".join(keys) + "\n" for keys in orders)


def read_events(lines: Iterable[str], on_done: Callable[[int, str, list[float]], None],
                expected: int, log: list | None = None) -> tuple[int, dict | None, dict | None]:
    """Feed ``sample`` lines to ``on_done``; returns (samples seen, the error event, the start event).
    ``log`` collects the other events (warm-up, per-round sensors and reference medians)."""
    seen, error, start = 0, None, None
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        kind = ev.get("event")
        if kind == "sample":
            xs = [float(x) for x in ev["samples_us"]]
            if len(xs) != expected:
                raise NoTimingsError(f"{ev['key']}: expected {expected} timed iterations, got {len(xs)}")
            on_done(int(ev["round"]), ev["key"], xs)
            seen += 1
        elif kind == "error":
            error = ev
        elif kind == "start":
            start = ev
        elif log is not None and kind in ("warmup", "round_start", "round_end"):
            log.append(ev)
    return seen, error, start


_SIGNALS = {signal.SIGSEGV: "segmentation fault (SIGSEGV)", signal.SIGABRT: "aborted (SIGABRT)",
            signal.SIGKILL: "killed (SIGKILL)", signal.SIGBUS: "bus error (SIGBUS)"}


def failure(rc: int, error: dict | None, seen: int, total: int, stderr_tail: str, where: str) -> AgentError:
    """One line for a runner that did not finish: its own error event, else the signal or exit code."""
    if error is not None:
        key = f" on {error['key']}" if error.get("key") else ""
        msg = f"fbnet-runner{key} ({error.get('stage')}): {error.get('message')}"
        return (AgentError if error.get("stage") in ("args", "load") else RunnerCrashError)(
            f"{msg} [{where}; {seen} of {total} measurements done]")
    sig = -rc if rc < 0 else rc - 128 if rc > 128 else None
    why = _SIGNALS.get(sig, f"signal {sig}") if sig else f"exit {rc}"
    tail = f": {stderr_tail}" if stderr_tail else ""
    return RunnerCrashError(f"fbnet-runner crashed ({why}) after {seen} of {total} measurements [{where}]{tail}")


def stream(cmd: list[str], on_done: Callable[[int, str, list[float]], None], expected: int, total: int,
           where: str, timeout_s: float | None = None, env: dict | None = None,
           log: list | None = None) -> dict | None:
    """Run ``cmd`` (a runner, or ``adb shell`` around one), feeding its samples to ``on_done`` as they
    arrive. Raises an AgentError after delivering every finished sample when it fails."""
    import tempfile

    with tempfile.TemporaryFile("w+") as err:
        try:
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        except FileNotFoundError as e:
            raise AgentError(f"cannot start {cmd[0]}: {e.strerror}") from e
        try:
            seen, error, start = read_events(p.stdout, on_done, expected, log)
        except BaseException:
            p.kill()
            p.wait()
            raise
        finally:
            p.stdout.close()
        try:
            rc = p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            p.kill()
            raise AgentError(f"fbnet-runner did not finish within {timeout_s:.0f} s [{where}]") from e
        err.seek(0)
        lines = [ln.strip() for ln in err.read().splitlines() if ln.strip()]
    if rc != 0 or error is not None or seen != total:
        tail = lines[-1][:300] if lines else ""
        if rc == 0 and error is None:
            raise NoTimingsError(f"fbnet-runner printed {seen} of {total} measurements [{where}]: {tail}")
        raise failure(rc, error, seen, total, tail, where)
    return start
