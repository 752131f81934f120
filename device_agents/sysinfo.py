"""Readable facts about a Linux-like system from sysfs/procfs text (host and, over adb, the phone)."""

from __future__ import annotations

import glob
import os
import platform
import re
import socket


def parse_freqs(lines: dict[str, str]) -> dict[str, float]:
    """``/sys/.../cpuN/cpufreq/scaling_cur_freq`` (kHz) -> {"cpuN": MHz}."""
    out: dict[str, float] = {}
    for path, text in lines.items():
        m = re.search(r"/(cpu\d+)/cpufreq/", path)
        try:
            if m:
                out[m[1]] = int(text.strip()) / 1000.0
        except ValueError:
            continue
    return out


def parse_temps(zones: dict[str, tuple[str, str]]) -> dict[str, float]:
    """{zone: (type, millidegree text)} -> {"zoneN:type": degC}."""
    out: dict[str, float] = {}
    for zone, (kind, text) in zones.items():
        try:
            v = float(text.strip())
        except ValueError:
            continue
        out[f"{zone}:{kind.strip()}"] = v / 1000.0 if abs(v) > 200 else v
    return out


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def host_freqs() -> dict[str, float]:
    files = {p: _read(p) for p in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq")}
    out = parse_freqs({p: t for p, t in files.items() if t is not None})
    if not out:  # VMs often lack cpufreq; /proc/cpuinfo has the current MHz
        text = _read("/proc/cpuinfo") or ""
        for i, mhz in enumerate(re.findall(r"cpu MHz\s*:\s*([0-9.]+)", text)):
            out[f"cpu{i}"] = float(mhz)
    return out


def host_temps() -> dict[str, float]:
    zones = {}
    for z in glob.glob("/sys/class/thermal/thermal_zone*"):
        t = _read(f"{z}/temp")
        if t is not None:
            zones[os.path.basename(z)] = (_read(f"{z}/type") or "", t)
    return parse_temps(zones)


def host_cpu_model() -> str | None:
    text = _read("/proc/cpuinfo") or ""
    m = re.search(r"model name\s*:\s*(.+)", text)
    return m[1].strip() if m else platform.processor() or None


def affinity_mask() -> str | None:
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:
        return None
    return format(sum(1 << c for c in cpus), "x")


def cpus_of_mask(mask: str) -> set[int]:
    try:
        v = int(mask, 16)
    except ValueError as e:
        raise ValueError(f"CPU mask {mask!r} is not hexadecimal (e.g. 80 for cpu7, f0 for cpu4-7)") from e
    cpus = {i for i in range(v.bit_length()) if v >> i & 1}
    if not cpus:
        raise ValueError(f"CPU mask {mask!r} selects no CPU")
    return cpus


def host_os() -> str:
    return platform.platform()


def hostname() -> str:
    return socket.gethostname()
