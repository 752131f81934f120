"""The measurement protocol under noise, on a device double whose speed changes from round to round
(what a shared host or a throttling phone does): normalisation, the unstable flag, honest re-measures,
overhead programs shuffled into the rounds, and failures that keep the finished ops."""

from __future__ import annotations

import statistics

import pytest

from device_agents.protocol import (
    NoTimingsError,
    Programs,
    ProtocolConfig,
    ProtocolInfo,
    Provenance,
    Transport,
    run_protocol,
)

BASE = {"a": 100.0, "b": 200.0, "c": 400.0, "d": 800.0, "ov": 10.0}


class DriftingDevice(Transport):
    """Every key costs BASE[key] x the speed of the current call batch; ``noisy`` keys alternate +-50%."""

    name, fmt = "double", "pte"

    def __init__(self, speeds, noisy=(), fail_at: int | None = None):
        self.speeds, self.noisy, self.fail_at = list(speeds), set(noisy), fail_at
        self.calls, self.orders, self.n = 0, [], 0

    def prepare(self, programs):
        pass

    def provenance(self):
        return Provenance(runtime="double", runtime_version="0")

    def measure(self, keys, warmup, repeats, on_done):
        speed = self.speeds[min(self.calls, len(self.speeds) - 1)]
        self.calls += 1
        self.orders.append(list(keys))
        for k in keys:
            self.n += 1
            if self.fail_at is not None and self.n > self.fail_at:
                raise NoTimingsError(f"device gone at {k}")
            xs = [BASE[k] * speed * ((1.5 if i % 2 else 0.5) if k in self.noisy else 1.0) for i in range(repeats)]
            on_done(k, xs)


CFG = ProtocolConfig(warmup=0, repeats=4, rounds=3, cv_threshold=10.0, reference=2)


def test_round_factors_normalise_a_drifting_device():
    ops = ["a", "b", "c", "d"]
    raw = run_protocol(DriftingDevice([1.0, 2.0, 1.0]), ops, CFG)
    info = ProtocolInfo()
    norm = run_protocol(DriftingDevice([1.0, 2.0, 1.0]), ops, ProtocolConfig(**{**CFG.__dict__, "normalize": True}),
                        info=info)
    assert info.reference_keys == ["a", "c"] and info.round_factors == pytest.approx([1.0, 2.0, 1.0])
    assert info.spread == pytest.approx(1.0) and info.unstable  # default threshold 0.5
    for k in ops:  # the slow round is folded back: every sample equals the op's real cost
        assert norm[k].samples_us == pytest.approx([BASE[k]] * 12)
        assert raw[k].stats.mean_us == pytest.approx(BASE[k] * 4 / 3)  # without: the slow round stays in
    quiet = ProtocolInfo()
    run_protocol(DriftingDevice([1.0, 1.3, 1.0]), ops, CFG, info=quiet)
    assert quiet.spread == pytest.approx(0.3) and not quiet.unstable


def test_remeasure_keeps_all_samples_and_overheads_are_shuffled_in():
    dev = DriftingDevice([1.0], noisy={"b"})
    cfg = ProtocolConfig(warmup=0, repeats=4, rounds=3, cv_threshold=0.25, seed=3)
    res = run_protocol(dev, Programs(["a", "b", "c"], overhead_of={"a": "ov", "b": "ov", "c": "ov"}), cfg)
    assert res["b"].remeasured and res["b"].stats.n == 2 * 12 and not res["a"].remeasured
    assert res["b"].stats.median_us == pytest.approx(statistics.median([100.0, 300.0] * 12))
    assert res["a"].overhead_us == pytest.approx(10.0)
    first_pass = dev.orders[:3]
    assert all(sorted(o) == ["a", "b", "c", "ov"] for o in first_pass)
    assert {o.index("ov") for o in first_pass} != {0}  # not always first: shuffled like the ops


def test_a_failure_keeps_ops_that_finished_all_rounds():
    got = []
    dev = DriftingDevice([1.0], fail_at=2 * 3 + 1)  # dies in the first key of the third round... of 3 keys
    with pytest.raises(NoTimingsError):
        run_protocol(dev, ["a", "b", "c"], ProtocolConfig(warmup=0, repeats=2, rounds=3, cv_threshold=10.0),
                     on_result=got.append)
    assert len(got) == 1 and got[0].stats.n == 6


def test_calibration_models_share_the_rounds_but_are_not_reported_as_ops():
    """Whole calibration models (``Programs.extra``) are shuffled into every first-pass round with the ops,
    normalised like them, returned, and never sent on as ops (on_result / on_sample) nor re-measured."""
    BASE["model"] = 1600.0
    try:
        dev = DriftingDevice([1.0, 2.0, 1.0], noisy={"model"})
        reported, ticks = [], []
        cfg = ProtocolConfig(warmup=0, repeats=4, rounds=3, cv_threshold=0.25, reference=2, normalize=True)
        res = run_protocol(dev, Programs(["a", "b", "c", "d"], extra=["model"]), cfg, on_result=reported.append,
                           on_sample=ticks.append)
    finally:
        del BASE["model"]
    assert all("model" in o for o in dev.orders[:3]) and len(dev.orders) == 3  # not re-measured though noisy
    assert {o.index("model") for o in dev.orders} != {len(dev.orders[0]) - 1}  # shuffled, not appended
    assert [r.key for r in reported] == ["a", "b", "c", "d"] and "model" not in ticks and len(ticks) == 12
    assert res["model"].stats.n == 12 and not res["model"].remeasured
    assert res["model"].stats.median_us == pytest.approx(1600.0)  # the slow round folded back (0.5/1.5 x 1600)


class MoodyModels(DriftingDevice):
    """Models m0..m5 one percent apart whose first ``moody`` rounds swap their order (even-numbered models
    +20 % in even rounds and -20 % in odd ones, odd-numbered models the reverse), then run true."""

    def __init__(self, moody: int = 3):
        super().__init__([1.0])
        self.moody = moody

    def measure(self, keys, warmup, repeats, on_done):
        r = self.calls
        self.calls += 1
        self.orders.append(list(keys))
        for k in keys:
            if k.startswith("m"):
                i = int(k[1:])
                mood = 1.0 if r >= self.moody else (1.2 if (r + i) % 2 == 0 else 0.8)
                on_done(k, [1000.0 * (1 + 0.01 * i) * mood] * repeats)
            else:
                on_done(k, [BASE[k]] * repeats)


MODELS = [f"m{i}" for i in range(6)]
SETTLE = Programs(["a", *MODELS], reference=["a"], settle=MODELS)


def test_models_get_rounds_until_their_ranking_reproduces_itself():
    """Validate's settling: after the first pass, blocks of ``rounds`` more rounds of the models (and the
    references) until the split-half tau of their medians reaches ``settle_tau``; the models then keep
    every sample, the ops only their first pass, and each key is reported once."""
    cfg = ProtocolConfig(warmup=0, repeats=4, rounds=3, cv_threshold=10.0, settle_tau=0.9, max_rounds=24)
    dev, info, reported = MoodyModels(), ProtocolInfo(), []
    res = run_protocol(dev, Programs(["a", "b", *MODELS], reference=["a"], settle=MODELS), cfg, info=info,
                       on_result=reported.append)
    # 3 rounds: even and odd rounds rank the models in opposite orders; 6: still the moody rounds' median;
    # 9: both halves' medians are the true costs
    assert [s["rounds"] for s in info.settle] == [3, 6, 9]
    assert info.settle[0]["tau"] < 0 and info.settle[-1]["tau"] == pytest.approx(1.0)
    assert info.split_half_tau == pytest.approx(1.0)
    assert len(dev.orders) == 9 and all(sorted(o) == sorted(["a", *MODELS]) for o in dev.orders[3:])
    assert all(res[m].stats.n == 9 * 4 for m in MODELS) and res["b"].stats.n == 3 * 4
    assert [res[m].stats.median_us for m in MODELS] == pytest.approx([1000.0 * (1 + 0.01 * i) for i in range(6)])
    assert sorted(r.key for r in reported) == sorted(["a", "b", *MODELS])  # once each, models when settled

    capped, info = MoodyModels(), ProtocolInfo()  # --max-rounds stops it, and says where it stood
    run_protocol(capped, SETTLE, ProtocolConfig(**{**cfg.__dict__, "max_rounds": 6}), info=info)
    assert [s["rounds"] for s in info.settle] == [3, 6] and info.split_half_tau < 0.9 and len(capped.orders) == 6

    quiet, info = MoodyModels(moody=0), ProtocolInfo()  # a ranking that reproduces at once costs nothing more
    run_protocol(quiet, SETTLE, cfg, info=info)
    assert info.settle == [{"rounds": 3, "tau": 1.0}] and len(quiet.orders) == 3
    off, info = MoodyModels(), ProtocolInfo()  # settle_tau 0: the first pass only, its tau still reported
    run_protocol(off, SETTLE, ProtocolConfig(**{**cfg.__dict__, "settle_tau": 0.0}), info=info)
    assert [s["rounds"] for s in info.settle] == [3] and info.split_half_tau < 0 and len(off.orders) == 3
