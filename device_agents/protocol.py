"""The measurement protocol every transport shares.

Warm-up and timed iterations run in one process per op (the transport's job); this module decides
the order (several interleaved rounds, shuffled per round with a seed, so drift spreads over all
ops), adds an identity-like program per input shape to measure the runtime's per-call overhead,
re-measures ops whose coefficient of variation is too high, and turns samples into statistics.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from fbnet.wire import Measurement, RunProvenance


class AgentError(RuntimeError):
    """A failure the agent reports as one line (device lost, runner crash, no timings, ...)."""


class DeviceLostError(AgentError):
    pass


class RunnerCrashError(AgentError):
    pass


class NoTimingsError(AgentError):
    pass


@dataclass(frozen=True)
class ProtocolConfig:
    warmup: int = 10
    repeats: int = 50
    rounds: int = 3
    seed: int = 0
    cv_threshold: float = 0.25
    max_remeasure: int = 1
    cooldown_s: float = 0.0


class Stats(Measurement):
    """The statistic fields of one op, declared once in :class:`fbnet.wire.Measurement` (the wire
    form); ``key`` and ``samples_us`` are filled in by :func:`to_measurement`. Adds the CV."""

    @property
    def cv(self) -> float:
        return self.std_us / self.mean_us if self.mean_us > 0 else 0.0

    def to_dict(self) -> dict:
        return {**self.model_dump(exclude={"key", "samples_us"}), "cv": self.cv}


def _quantile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if len(sorted_xs) == 1:
        return sorted_xs[0]
    pos = q * (len(sorted_xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def summarize(samples_us: Sequence[float]) -> Stats:
    if not samples_us:
        raise NoTimingsError("no samples to summarise")
    xs = sorted(float(x) for x in samples_us)
    mean = statistics.fmean(xs)
    std = statistics.pstdev(xs) if len(xs) > 1 else 0.0
    try:
        return Stats(
            key="", n=len(xs), median_us=statistics.median(xs), mean_us=mean, std_us=std, min_us=xs[0],
            p10_us=_quantile(xs, 0.10), p90_us=_quantile(xs, 0.90),
        )
    except ValidationError as e:  # a zero or non-finite sample: not a timing
        raise NoTimingsError(f"samples are not timings: {e.errors()[0].get('msg')}") from None


def to_measurement(key: str, stats: Stats, samples_us: Sequence[float] | None = None) -> Measurement:
    """The wire form of ``stats`` for op ``key`` (with its samples when given)."""
    return Measurement(**stats.model_dump(exclude={"key", "samples_us"}), key=key,
                       samples_us=list(samples_us) if samples_us is not None else None)


# What a transport tells about the run it makes: the wire schema's provenance part, not a copy of it.
Provenance = RunProvenance


class Transport(ABC):
    """Puts programs on a target and times them there."""

    name: str  # host | adb | ios
    fmt: str  # pte | mlpackage

    @abstractmethod
    def prepare(self, programs: dict[str, Path]) -> None:
        """Make every program (key -> exported file) ready to run (push, compile, load)."""

    @abstractmethod
    def measure(self, keys: Sequence[str], warmup: int, repeats: int,
                on_done: Callable[[str, list[float]], None]) -> None:
        """Time each key in the given order: ``warmup`` untimed then ``repeats`` timed runs in one process;
        call ``on_done(key, samples_us)`` as each key finishes. Raises an :class:`AgentError` on failure."""

    def measure_rounds(self, orders: Sequence[Sequence[str]], warmup: int, repeats: int,
                       on_done: Callable[[int, str, list[float]], None], cooldown_s: float = 0.0) -> None:
        """Every round of a round set, in order: ``orders[r]`` is round r's program order; call
        ``on_done(r, key, samples_us)`` as each finishes and rest ``cooldown_s`` after each. The default
        runs :meth:`measure` once per round; a transport with a native runner runs them in one process."""
        for r, keys in enumerate(orders):
            def done(k: str, xs: list[float], r=r) -> None:
                on_done(r, k, xs)
                if cooldown_s > 0:
                    time.sleep(cooldown_s)

            self.measure(keys, warmup, repeats, done)

    @abstractmethod
    def provenance(self) -> Provenance: ...

    def sensors(self) -> tuple[dict[str, float], dict[str, float]]:
        """(temperatures in degC, CPU frequencies in MHz) where readable."""
        return {}, {}

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


@dataclass
class OpResult:
    key: str
    stats: Stats
    samples_us: list[float]
    overhead_us: float | None = None
    remeasured: bool = False


def run_protocol(
    transport: Transport,
    op_keys: Sequence[str],
    cfg: ProtocolConfig,
    overhead_of: dict[str, str] | None = None,
    on_result: Callable[[OpResult], None] | None = None,
    on_sample: Callable[[str], None] | None = None,
) -> dict[str, OpResult]:
    """Interleaved rounds over ``op_keys`` (+ the overhead programs named in ``overhead_of``: op key ->
    overhead program key). ``on_result`` fires when an op is final (after its last round, or after
    its re-measurement); ``on_sample`` after every single (op, round) measurement (progress)."""
    overhead_of = overhead_of or {}
    ov_keys = list(dict.fromkeys(overhead_of[k] for k in op_keys if k in overhead_of))
    samples: dict[str, list[float]] = {k: [] for k in [*op_keys, *ov_keys]}
    results: dict[str, OpResult] = {}
    ov_set = set(ov_keys)

    def ov_value(key: str) -> float | None:
        ok = overhead_of.get(key)
        if ok is None or len(samples[ok]) < cfg.repeats * cfg.rounds:
            return None
        return summarize(samples[ok]).median_us

    def finish(key: str, s: list[float], remeasured: bool = False) -> None:
        res = OpResult(key, summarize(s), list(s), ov_value(key), remeasured)
        results[key] = res
        if on_result:
            on_result(res)

    def rounds_over(keys: list[str], store: dict[str, list[float]], final: Callable[[str], None]) -> None:
        orders = []
        for r in range(cfg.rounds):
            rng = random.Random(cfg.seed * 1000 + r)
            # overhead programs first, so an op's overhead is known the moment its last round ends
            ovs = [k for k in keys if k in ov_set]
            ops_ = [k for k in keys if k not in ov_set]
            rng.shuffle(ovs)
            rng.shuffle(ops_)
            orders.append([*ovs, *ops_])

        def done(r: int, k: str, xs: list[float]) -> None:
            if len(xs) != cfg.repeats:
                raise NoTimingsError(f"{k}: expected {cfg.repeats} timed iterations, got {len(xs)}")
            store[k].extend(xs)
            if on_sample and k not in ov_set:
                on_sample(k)
            if r == cfg.rounds - 1:
                final(k)

        transport.measure_rounds(orders, cfg.warmup, cfg.repeats, done, cfg.cooldown_s)

    high_cv: list[str] = []

    def first_pass_final(k: str) -> None:
        if k in ov_set:
            return
        if summarize(samples[k]).cv > cfg.cv_threshold and cfg.max_remeasure > 0:
            high_cv.append(k)
        else:
            finish(k, samples[k])

    rounds_over([*op_keys, *ov_keys], samples, first_pass_final)

    for _ in range(cfg.max_remeasure):
        if not high_cv:
            break
        again: dict[str, list[float]] = {k: [] for k in high_cv}
        todo, high_cv = high_cv, []
        rounds_over(todo, again, lambda k: None)
        for k in todo:
            old, new = summarize(samples[k]), summarize(again[k])
            if new.cv < old.cv:
                samples[k] = again[k]
        for k in todo:
            finish(k, samples[k], remeasured=True)

    return results


def overhead_summary(results: dict[str, OpResult]) -> float | None:
    """One per-call overhead for the run: the median over ops of their input shape's overhead."""
    vals = [r.overhead_us for r in results.values() if r.overhead_us is not None]
    return statistics.median(vals) if vals else None
