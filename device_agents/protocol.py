"""The measurement protocol every transport shares.

Warm-up and timed iterations run in one process per op (the transport's job); this module decides
the order (several interleaved rounds, shuffled per round with a seed, so drift spreads over all
ops and the identity-like overhead program of every input shape), times reference ops in every round
(per-round factors: normalisation and the unstable flag), re-measures ops whose coefficient of
variation is too high keeping every sample, and turns samples into statistics.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
    reference: int = 0  # reference ops among the keys, timed every round (their medians give the round factors)
    normalize: bool = False  # divide every round's samples by its reference factor
    unstable_threshold: float = 0.5  # round factors spreading more than this mark the run unstable
    warmup_stable: bool = False  # before the rounds, time the first reference op until its median settles
    stable_tol: float = 0.03
    max_warmup_batches: int = 10
    # With ``settle_keys`` (validate: the whole models): after the first pass, add blocks of ``rounds``
    # rounds over those keys and the references until the split-half Kendall tau of their ranking
    # reaches ``settle_tau`` or they have ``max_rounds`` rounds (0 = off)
    settle_tau: float = 0.0
    max_rounds: int = 24


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


def to_measurement(key: str, stats: Stats, samples_us: Sequence[float] | None = None,
                   overhead_us: float | None = None) -> Measurement:
    """The wire form of ``stats`` for op ``key`` (with its samples and its input shape's overhead when given)."""
    return Measurement(**stats.model_dump(exclude={"key", "samples_us", "overhead_us"}), key=key,
                       samples_us=list(samples_us) if samples_us is not None else None, overhead_us=overhead_us)


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


@dataclass
class ProtocolInfo:
    """What the protocol did besides the ops' statistics (recorded in the run's ``extra``)."""

    reference_keys: list[str] = field(default_factory=list)
    round_factors: list[float] = field(default_factory=list)  # per round: reference medians / their baseline
    spread: float | None = None  # max / min round factor - 1
    unstable: bool = False
    warmup_batches: list[float] = field(default_factory=list)  # medians of the stabilising warm-up batches
    # settling (ProtocolConfig.settle_tau): per check, the settle keys' rounds so far and their split-half tau
    settle: list[dict] = field(default_factory=list)

    @property
    def split_half_tau(self) -> float | None:
        """The last split-half tau: how well the measurement reproduces its own ranking (None: not checked)."""
        return self.settle[-1]["tau"] if self.settle else None

    def to_dict(self) -> dict:
        return {"reference_keys": self.reference_keys, "round_factors": [round(f, 5) for f in self.round_factors],
                "spread": self.spread, "unstable": self.unstable,
                "warmup_batches_us": [round(x, 2) for x in self.warmup_batches], "settle": self.settle}


def pick_references(keys: Sequence[str], n: int) -> list[str]:
    """``n`` keys spread evenly over the sorted ``keys`` (deterministic)."""
    ks = sorted(keys)
    if n <= 0 or not ks:
        return []
    step = max(1, len(ks) // n)
    return ks[::step][:n]


def _warm_until_stable(transport: Transport, key: str, cfg: ProtocolConfig, info: ProtocolInfo) -> None:
    """Time ``key`` in batches until two consecutive batch medians agree within ``cfg.stable_tol``."""
    for _ in range(cfg.max_warmup_batches):
        got: list[list[float]] = []
        transport.measure([key], cfg.warmup, cfg.repeats, lambda k, xs, got=got: got.append(xs))
        info.warmup_batches.append(statistics.median(got[0]))
        a = info.warmup_batches
        if len(a) >= 2 and abs(a[-1] - a[-2]) <= cfg.stable_tol * a[-2]:
            return


def run_protocol(
    transport: Transport,
    op_keys: Sequence[str],
    cfg: ProtocolConfig,
    overhead_of: dict[str, str] | None = None,
    on_result: Callable[[OpResult], None] | None = None,
    on_sample: Callable[[str], None] | None = None,
    *,
    reference_keys: Sequence[str] | None = None,
    info: ProtocolInfo | None = None,
    extra_keys: Sequence[str] = (),
    settle_keys: Sequence[str] = (),
) -> dict[str, OpResult]:
    """Interleaved rounds over ``op_keys`` and the overhead programs named in ``overhead_of`` (op key ->
    overhead program key), all shuffled together in every round.

    Reference ops (``reference_keys``, else ``cfg.reference`` of the op keys) are timed in every round
    like the rest; each round's factor is the median over them of (their median in the round / their
    median over the first-pass rounds). With ``cfg.normalize`` every sample of a round is divided by
    that round's factor. A run whose factors spread more than ``cfg.unstable_threshold`` is marked
    unstable in ``info``. Ops whose CV exceeds ``cfg.cv_threshold`` get ``cfg.rounds`` more rounds
    (with the references) and keep ALL their samples. ``on_result`` fires once per op when it is final
    (after the first pass, or after its re-measurement; on a failure, for every op that completed all
    its rounds); ``on_sample`` after every (op, round) (progress). ``extra_keys`` (whole calibration
    models) are shuffled into the first-pass rounds like the ops and returned with them, but neither
    re-measured nor reported through ``on_result``/``on_sample`` (they are not ops of the table).
    ``settle_keys`` (some of ``op_keys``) get more rounds until their ranking reproduces itself
    (``cfg.settle_tau``: :func:`split_half_tau`, recorded in ``info.settle`` even when not settling);
    their results then hold every sample.
    """
    overhead_of = overhead_of or {}
    info = info if info is not None else ProtocolInfo()
    ov_keys = list(dict.fromkeys(overhead_of[k] for k in op_keys if k in overhead_of))
    ov_set = set(ov_keys)
    extra_keys = [k for k in dict.fromkeys(extra_keys) if k not in op_keys and k not in ov_set]
    quiet = ov_set | set(extra_keys)  # timed, not reported as ops
    refs = list(reference_keys) if reference_keys is not None else pick_references(op_keys, cfg.reference)
    info.reference_keys = refs
    per_round: dict[str, list[tuple[int, list[float]]]] = {k: [] for k in [*op_keys, *ov_keys, *extra_keys]}
    ref_meds: list[dict[str, float]] = []  # per global round: reference key -> its median in that round
    baseline: dict[str, float] = {}
    results: dict[str, OpResult] = {}

    if cfg.warmup_stable and refs:
        _warm_until_stable(transport, refs[0], cfg, info)

    def factor(r: int) -> float:
        ratios = [m / baseline[k] for k, m in ref_meds[r].items() if baseline.get(k)]
        return statistics.median(ratios) if ratios else 1.0

    def rounds_of(k: str) -> list[list[float]]:  # the key's samples per round (normalised with cfg.normalize)
        return [[x / factor(r) for x in xs] if cfg.normalize else list(xs) for r, xs in per_round[k]]

    def samples(k: str) -> list[float]:
        return [x for xs in rounds_of(k) for x in xs]

    def ov_value(key: str) -> float | None:
        ok = overhead_of.get(key)
        if ok is None or len(per_round[ok]) < cfg.rounds:
            return None
        return summarize(samples(ok)).median_us

    settling = set(settle_keys) if cfg.settle_tau > 0 else set()

    def finish(k: str, remeasured: bool = False, final: bool = False) -> None:
        xs = samples(k)
        results[k] = OpResult(k, summarize(xs), xs, ov_value(k), remeasured)
        if on_result and k not in quiet and (final or k not in settling):  # a settling key: once, when settled
            on_result(results[k])

    def set_baseline() -> None:
        for k in refs:
            meds = [m[k] for m in ref_meds if k in m]
            if meds:
                baseline[k] = statistics.median(meds)

    def rounds_over(keys: list[str], n_rounds: int, seed_base: int) -> None:
        orders = []
        for r in range(n_rounds):
            order = list(keys)
            random.Random(cfg.seed * 1000 + seed_base + r).shuffle(order)
            orders.append(order)
        g0 = len(ref_meds)
        ref_meds.extend({} for _ in orders)

        def done(r: int, k: str, xs: list[float]) -> None:
            if len(xs) != cfg.repeats:
                raise NoTimingsError(f"{k}: expected {cfg.repeats} timed iterations, got {len(xs)}")
            per_round[k].append((g0 + r, list(xs)))
            if k in refs:
                ref_meds[g0 + r][k] = statistics.median(xs)
            if on_sample and k not in quiet:
                on_sample(k)

        transport.measure_rounds(orders, cfg.warmup, cfg.repeats, done, cfg.cooldown_s)

    def finish_complete() -> None:  # after a failure: keep every op that has all its rounds
        set_baseline()
        for k in op_keys:
            if k not in results and len(per_round[k]) >= cfg.rounds:
                finish(k)

    high_cv: list[str] = []
    try:
        rounds_over([*op_keys, *ov_keys, *extra_keys], cfg.rounds, 0)
        set_baseline()
        for k in extra_keys:
            finish(k)
        for k in op_keys:
            if cfg.max_remeasure > 0 and summarize(samples(k)).cv > cfg.cv_threshold:
                high_cv.append(k)
            else:
                finish(k)
        for i in range(cfg.max_remeasure):
            if not high_cv:
                break
            again = list(dict.fromkeys([*high_cv, *(refs if cfg.normalize else [])]))
            rounds_over(again, cfg.rounds, 100 * (i + 1))
            todo, high_cv = high_cv, []
            for k in todo:  # all samples kept: a quieter second set never replaces the first
                if i + 1 < cfg.max_remeasure and summarize(samples(k)).cv > cfg.cv_threshold:
                    high_cv.append(k)
                else:
                    finish(k, remeasured=True)
        for k in high_cv:
            finish(k, remeasured=True)
        settle = [k for k in dict.fromkeys(settle_keys) if k in results]
        if len(settle) >= 3:  # the split-half tau is reported even when not settling (settle_tau 0)
            block = 0
            while True:
                have = min(len(per_round[k]) for k in settle)
                tau = split_half_tau({k: rounds_of(k) for k in settle})
                info.settle.append({"rounds": have, "tau": None if tau is None else round(tau, 4)})
                if (not settling or (tau is not None and tau >= cfg.settle_tau)
                        or have + cfg.rounds > cfg.max_rounds):
                    break
                block += 1
                rounds_over(list(dict.fromkeys([*settle, *refs])), cfg.rounds,
                            10_000 + 100 * block)
        for k in settle:  # every sample: the first pass's and the added rounds'
            finish(k, remeasured=results[k].remeasured, final=True)
    except AgentError:
        finish_complete()
        raise
    finally:
        info.round_factors = [factor(r) for r in range(len(ref_meds))] if refs and baseline else []
        fs = [f for f in info.round_factors if f > 0]
        info.spread = (max(fs) / min(fs) - 1) if len(fs) >= 2 else None
        # a verdict needs enough evidence: two reference ops over three rounds at least
        info.unstable = (info.spread is not None and len(refs) >= 2 and len(fs) >= 3
                         and info.spread > cfg.unstable_threshold)
    return results


def split_half_tau(rounds: dict[str, list[list[float]]]) -> float | None:
    """Kendall tau between two halves of a measurement: each key's median over its even-numbered rounds
    against the median over its odd-numbered ones. It is how well the measurement reproduces its own
    ranking of the keys, so it bounds the tau any prediction can reach against it. None with fewer
    than 3 keys or a key with fewer than 2 rounds (there is no second half)."""
    from scipy.stats import kendalltau

    if len(rounds) < 3 or any(len(rs) < 2 for rs in rounds.values()):
        return None
    a = [statistics.median(x for rs in v[0::2] for x in rs) for v in rounds.values()]
    b = [statistics.median(x for rs in v[1::2] for x in rs) for v in rounds.values()]
    t = kendalltau(a, b).statistic
    return None if math.isnan(t) else float(t)


def overhead_summary(results: dict[str, OpResult]) -> float | None:
    """One per-call overhead for the run: the median over ops of their input shape's overhead."""
    vals = [r.overhead_us for r in results.values() if r.overhead_us is not None]
    return statistics.median(vals) if vals else None
