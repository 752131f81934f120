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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fbnet.options import cli
from fbnet.wire import Measurement, RunProvenance


class AgentError(RuntimeError):
    """A failure the agent reports as one line (device lost, runner crash, no timings, ...)."""


class DeviceLostError(AgentError):
    pass


class RunnerCrashError(AgentError):
    pass


class NoTimingsError(AgentError):
    pass


PROTOCOL_PANEL = "Measurement protocol"
NOISE_PANEL = "Protocol under noise"


def _opt(panel: str = PROTOCOL_PANEL, flag: str | None = None) -> dict:
    return cli(flag, panel=panel)


def _rare() -> dict:
    """A knob left out of ``--help`` (it still takes an option, and a ``--config`` file sets it)."""
    return cli(panel=NOISE_PANEL, hidden=True)


class ProtocolConfig(BaseModel):
    """How every program is timed, for the profile and validate flows alike (a ``--config`` TOML file
    of these settings is read by both commands). A field's description is its option's help; the
    fine-tuning of re-measures and of the stable warm-up (``max_remeasure``, ``stable_tol``,
    ``max_warmup_batches``) is left out of ``--help``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    warmup: int = Field(10, ge=0, description="untimed executions before the timed ones, same process",
                        json_schema_extra=_opt())
    repeats: int = Field(50, ge=1, description="timed executions per op per round", json_schema_extra=_opt())
    rounds: int = Field(3, ge=1, description="interleaved rounds over the op list (shuffled per round)",
                        json_schema_extra=_opt())
    seed: int = Field(0, description="seed of the per-round op order (and of random architectures)",
                      json_schema_extra=_opt())
    cv_threshold: float = Field(0.25, ge=0, description="re-measure ops whose CV is above this",
                                json_schema_extra=_opt())
    max_remeasure: int = Field(1, ge=0, description="re-measurements of an op whose CV stays above the "
                               "threshold (every sample is kept)", json_schema_extra=_rare())
    cooldown_s: float = Field(0.0, ge=0, description="seconds to rest after each op",
                              json_schema_extra=_opt(NOISE_PANEL, "--cooldown"))
    reference: int = Field(0, ge=0, description=(
        "reference ops timed in every round: their per-round medians give the round factors (normalisation, "
        "unstable flag)"), json_schema_extra=_opt(NOISE_PANEL, "--reference-ops"))
    normalize: bool = Field(False, description="divide each round's samples by its reference factor",
                            json_schema_extra=_opt(NOISE_PANEL))
    unstable_threshold: float = Field(0.5, ge=0, description="mark the run unstable when round factors spread "
                                      "more than this", json_schema_extra=_opt(NOISE_PANEL))
    warmup_stable: bool = Field(False, description="before the rounds, time a reference op until its median "
                                "settles", json_schema_extra=_opt(NOISE_PANEL))
    stable_tol: float = Field(0.03, gt=0, description="settled: two consecutive warm-up batch medians within "
                              "this fraction", json_schema_extra=_rare())
    max_warmup_batches: int = Field(10, ge=1, description="at most this many warm-up batches",
                                    json_schema_extra=_rare())
    # The settle keys (validate: the whole models) get blocks of ``rounds`` more rounds with the
    # references until the split-half Kendall tau of their ranking reaches ``settle_tau`` or they have
    # ``max_rounds`` rounds (0 = off)
    settle_tau: float = Field(0.0, ge=0.0, le=1.0, description=(
        "add --rounds more rounds of the models until their ranking reproduces itself: the Kendall tau of "
        "their medians over the even vs the odd rounds reaches this (0 = off; printed either way: it bounds "
        "the tau any table can reach)"), json_schema_extra=_opt(NOISE_PANEL))
    max_rounds: int = Field(24, ge=1, description="at most this many rounds of the models when settling",
                            json_schema_extra=_opt(NOISE_PANEL))


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


@dataclass(frozen=True)
class Programs:
    """What one protocol run times, by role (program keys).

    ``ops`` are the table's ops: reported, re-measured when noisy. ``overhead_of`` maps an op to its
    input shape's overhead program, timed in the same rounds, not reported. ``reference`` ops (None:
    ``ProtocolConfig.reference`` of the ops) give the round factors. ``extra`` programs (whole
    calibration models) share the first-pass rounds and are returned, but neither re-measured nor
    reported. ``settle`` keys (some of the ops) get more rounds until their ranking reproduces itself.
    """

    ops: Sequence[str]
    overhead_of: Mapping[str, str] = field(default_factory=dict)
    reference: Sequence[str] | None = None
    extra: Sequence[str] = ()
    settle: Sequence[str] = ()


def run_protocol(transport: Transport, programs: Programs | Sequence[str], cfg: ProtocolConfig, *,
                 on_result: Callable[[OpResult], None] | None = None, on_sample: Callable[[str], None] | None = None,
                 info: ProtocolInfo | None = None) -> dict[str, OpResult]:
    """Interleaved rounds over the ops and their overhead programs, all shuffled together in every round.

    Reference ops are timed in every round like the rest; each round's factor is the median over them
    of (their median in the round / their median over the first-pass rounds). With ``cfg.normalize``
    every sample of a round is divided by that round's factor. A run whose factors spread more than
    ``cfg.unstable_threshold`` is marked unstable in ``info``. Ops whose CV exceeds ``cfg.cv_threshold``
    get ``cfg.rounds`` more rounds (with the references) and keep ALL their samples. ``on_result``
    fires once per op when it is final (after the first pass, or after its re-measurement; on a
    failure, for every op that completed all its rounds); ``on_sample`` after every (op, round)
    (progress). Settle keys get more rounds until their ranking reproduces itself (``cfg.settle_tau``:
    :func:`split_half_tau`, recorded in ``info.settle`` even when not settling); their results then
    hold every sample. ``programs`` may be a plain list of op keys.
    """
    if not isinstance(programs, Programs):
        programs = Programs(list(programs))
    return _ProtocolRun(transport, programs, cfg, on_result, on_sample, info).run()


class _ProtocolRun:
    """One run of the protocol in named steps: warm up, first pass, re-measure, settle, judge."""

    def __init__(self, transport: Transport, programs: Programs, cfg: ProtocolConfig,
                 on_result: Callable[[OpResult], None] | None, on_sample: Callable[[str], None] | None,
                 info: ProtocolInfo | None):
        self.tr, self.cfg, self.on_result, self.on_sample = transport, cfg, on_result, on_sample
        self.info = info if info is not None else ProtocolInfo()
        self.ops = list(programs.ops)
        self.overhead_of = dict(programs.overhead_of)
        self.ov_keys = list(dict.fromkeys(self.overhead_of[k] for k in self.ops if k in self.overhead_of))
        ov_set = set(self.ov_keys)
        self.extra = [k for k in dict.fromkeys(programs.extra) if k not in self.ops and k not in ov_set]
        self.quiet = ov_set | set(self.extra)  # timed, not reported as ops
        refs = programs.reference
        self.refs = list(refs) if refs is not None else pick_references(self.ops, cfg.reference)
        self.info.reference_keys = self.refs
        self.settle_keys = list(dict.fromkeys(programs.settle))
        self.settling = set(self.settle_keys) if cfg.settle_tau > 0 else set()
        self.per_round: dict[str, list[tuple[int, list[float]]]] = {k: [] for k in [*self.ops, *self.ov_keys,
                                                                                   *self.extra]}
        self.ref_meds: list[dict[str, float]] = []  # per global round: reference key -> its median in that round
        self.baseline: dict[str, float] = {}
        self.results: dict[str, OpResult] = {}

    def run(self) -> dict[str, OpResult]:
        if self.cfg.warmup_stable and self.refs:
            _warm_until_stable(self.tr, self.refs[0], self.cfg, self.info)
        try:
            self.remeasure(self.first_pass())
            self.settle()
        except AgentError:
            self.keep_complete()
            raise
        finally:
            self.judge()
        return self.results

    # -- the samples --------------------------------------------------------------------------
    def factor(self, r: int) -> float:
        ratios = [m / self.baseline[k] for k, m in self.ref_meds[r].items() if self.baseline.get(k)]
        return statistics.median(ratios) if ratios else 1.0

    def rounds_of(self, k: str) -> list[list[float]]:
        """The key's samples per round (normalised with ``cfg.normalize``)."""
        norm = self.cfg.normalize
        return [[x / self.factor(r) for x in xs] if norm else list(xs) for r, xs in self.per_round[k]]

    def samples(self, k: str) -> list[float]:
        return [x for xs in self.rounds_of(k) for x in xs]

    def overhead_us(self, key: str) -> float | None:
        ok = self.overhead_of.get(key)
        if ok is None or len(self.per_round[ok]) < self.cfg.rounds:
            return None
        return summarize(self.samples(ok)).median_us

    def noisy(self, k: str) -> bool:
        return summarize(self.samples(k)).cv > self.cfg.cv_threshold

    def finish(self, k: str, remeasured: bool = False, final: bool = False) -> None:
        xs = self.samples(k)
        self.results[k] = OpResult(k, summarize(xs), xs, self.overhead_us(k), remeasured)
        if self.on_result and k not in self.quiet and (final or k not in self.settling):  # settling: once, settled
            self.on_result(self.results[k])

    def set_baseline(self) -> None:
        for k in self.refs:
            meds = [m[k] for m in self.ref_meds if k in m]
            if meds:
                self.baseline[k] = statistics.median(meds)

    # -- the steps ----------------------------------------------------------------------------
    def rounds_over(self, keys: list[str], n_rounds: int, seed_base: int) -> None:
        orders = []
        for r in range(n_rounds):
            order = list(keys)
            random.Random(self.cfg.seed * 1000 + seed_base + r).shuffle(order)
            orders.append(order)
        g0 = len(self.ref_meds)
        self.ref_meds.extend({} for _ in orders)

        def done(r: int, k: str, xs: list[float]) -> None:
            if len(xs) != self.cfg.repeats:
                raise NoTimingsError(f"{k}: expected {self.cfg.repeats} timed iterations, got {len(xs)}")
            self.per_round[k].append((g0 + r, list(xs)))
            if k in self.refs:
                self.ref_meds[g0 + r][k] = statistics.median(xs)
            if self.on_sample and k not in self.quiet:
                self.on_sample(k)

        self.tr.measure_rounds(orders, self.cfg.warmup, self.cfg.repeats, done, self.cfg.cooldown_s)

    def first_pass(self) -> list[str]:
        """Every program in ``cfg.rounds`` rounds; the ops that are final now are finished, the noisy
        ones returned."""
        self.rounds_over([*self.ops, *self.ov_keys, *self.extra], self.cfg.rounds, 0)
        self.set_baseline()
        for k in self.extra:
            self.finish(k)
        high_cv = []
        for k in self.ops:
            if self.cfg.max_remeasure > 0 and self.noisy(k):
                high_cv.append(k)
            else:
                self.finish(k)
        return high_cv

    def remeasure(self, high_cv: list[str]) -> None:
        """More rounds of the noisy ops (with the references when normalising); all samples are kept:
        a quieter second set never replaces the first."""
        cfg = self.cfg
        for i in range(cfg.max_remeasure):
            if not high_cv:
                break
            again = list(dict.fromkeys([*high_cv, *(self.refs if cfg.normalize else [])]))
            self.rounds_over(again, cfg.rounds, 100 * (i + 1))
            todo, high_cv = high_cv, []
            for k in todo:
                if i + 1 < cfg.max_remeasure and self.noisy(k):
                    high_cv.append(k)
                else:
                    self.finish(k, remeasured=True)

    def settle(self) -> None:
        """The split-half tau of the settle keys (recorded even when not settling); while settling and
        below ``cfg.settle_tau``, blocks of ``cfg.rounds`` more rounds up to ``cfg.max_rounds``."""
        cfg = self.cfg
        settle = [k for k in self.settle_keys if k in self.results]
        if len(settle) >= 3:
            block = 0
            while True:
                have = min(len(self.per_round[k]) for k in settle)
                tau = split_half_tau({k: self.rounds_of(k) for k in settle})
                self.info.settle.append({"rounds": have, "tau": None if tau is None else round(tau, 4)})
                if (not self.settling or (tau is not None and tau >= cfg.settle_tau)
                        or have + cfg.rounds > cfg.max_rounds):
                    break
                block += 1
                self.rounds_over(list(dict.fromkeys([*settle, *self.refs])), cfg.rounds, 10_000 + 100 * block)
        for k in settle:  # every sample: the first pass's and the added rounds'
            self.finish(k, remeasured=self.results[k].remeasured, final=True)

    def keep_complete(self) -> None:
        """After a failure: keep every op that has all its rounds."""
        self.set_baseline()
        for k in self.ops:
            if k not in self.results and len(self.per_round[k]) >= self.cfg.rounds:
                self.finish(k)

    def judge(self) -> None:
        """The round factors, their spread and the unstable verdict, into ``info``."""
        info = self.info
        info.round_factors = [self.factor(r) for r in range(len(self.ref_meds))] if self.refs and self.baseline else []
        fs = [f for f in info.round_factors if f > 0]
        info.spread = (max(fs) / min(fs) - 1) if len(fs) >= 2 else None
        # a verdict needs enough evidence: two reference ops over three rounds at least
        info.unstable = (info.spread is not None and len(self.refs) >= 2 and len(fs) >= 3
                         and info.spread > self.cfg.unstable_threshold)


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
