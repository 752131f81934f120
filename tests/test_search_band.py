"""The uniform-in-band random sampler (search.band): uniform in table latency within [lo, hi] on the
Pixel 3 HW-NAS-Bench table, exactly so on an enumerable table, where the constrained argmax of
Gumbel logits it replaced piles at one edge; deterministic, distinct, fast; refusals."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time

import numpy as np
import pytest
from conftest import HWNASBENCH

from fbnet.lut import build_lut, predict
from fbnet.space import get_space
from fbnet.wire import Table, TableEntry
from profiler_server.domain.importers import parse
from search.band import BandError, uniform_in_band
from search.select import latency_range, most_likely_within, random_within

SPACE = get_space("fbnet-cifar")


def _pixel3_lut():
    """The Pixel 3 table of HW-NAS-Bench mapped by the service's importer, as a table the search reads."""
    doc = json.loads((HWNASBENCH / "pixel3_latency.json").read_text())
    values = parse(doc, "hwnasbench", SPACE).values
    entries = []
    for op in SPACE.ops:
        layers = list(SPACE.op_layers[op.key])
        if op.is_identity:
            entries.append(TableEntry(**op.fields(), latency_us=0.0, source="identity", layers=layers))
        else:
            entries.append(TableEntry(**op.fields(), latency_us=values[op.key]["median_us"], n=1, std_us=0.0, runs=1,
                                      source="measured", layers=layers))
    blob = json.dumps([e.model_dump() for e in entries], sort_keys=True).encode()
    return build_lut(Table(device="pixel3", space=SPACE.name, space_version=SPACE.version,
                           version=hashlib.sha256(blob).hexdigest()[:16], complete=True, missing=[], overhead_us=None,
                           rule="HW-NAS-Bench pixel3 import", entries=entries), SPACE)


LUT = _pixel3_lut()
LO, HI = latency_range(LUT)
TARGET = LO + 0.20 * (HI - LO)  # the example target
BAND = (0.95 * TARGET, 1.05 * TARGET)  # the benchmark's band around a found architecture


def _critical(df: int, z: float = 2.3263) -> float:
    """The chi-square 99 % critical value (Wilson-Hilferty; 21.67 at 9 degrees of freedom)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _chi2(latencies, band, bins: int) -> tuple[float, np.ndarray]:
    h = np.histogram(latencies, bins=bins, range=band)[0]
    e = len(latencies) / bins
    return float(((h - e) ** 2 / e).sum()), h


def _latencies(archs) -> np.ndarray:
    return np.array([predict(LUT, a)["latency_us"] for a in archs])


def _old_random_within(lut, lo_us, hi_us, k, seed=0):
    """The sampler this replaced: the constrained argmax of i.i.d. Gumbel logits."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(20 * k):
        a = most_likely_within(rng.gumbel(size=np.asarray(lut.matrix).shape), lut, lo_us, hi_us, resolution=1000,
                               tries=20)
        if a is not None and a not in out:
            out.append(a)
        if len(out) == k:
            break
    return out


def test_uniform_in_latency_on_the_pixel3_table():
    archs = random_within(LUT, *BAND, k=300, seed=1)
    lat = _latencies(archs)
    assert len(set(archs)) == 300 and ((lat >= BAND[0]) & (lat <= BAND[1])).all()
    chi2, hist = _chi2(lat, BAND, 10)
    assert chi2 < _critical(9), hist
    fine, hist40 = _chi2(lat, BAND, 40)  # bins that cut across the sampler's 20: flat inside them too
    assert fine < _critical(39), hist40
    width = BAND[1] - BAND[0]
    assert abs(lat.mean() - sum(BAND) / 2) < 0.06 * width  # 3.6 standard errors of a uniform mean


def test_the_old_sampler_fails_the_same_check():
    lat = _latencies(_old_random_within(LUT, *BAND, k=60, seed=1))
    chi2, hist = _chi2(lat, BAND, 10)
    assert chi2 > 3 * _critical(9), hist
    assert abs(lat.mean() - sum(BAND) / 2) > 0.2 * (BAND[1] - BAND[0])  # piled towards one edge


def test_exact_on_an_enumerable_table():
    """Three layers carry latency 10a + 3b + c (a, b, c in 0..8), the other 19 a constant 1 us: the
    exact law is enumerable. Bins get equal shares, and within a bin each latency value appears in
    proportion to the number of architectures having it."""
    m = [[10.0 * i for i in range(9)], [3.0 * i for i in range(9)], [1.0 * i for i in range(9)]] + [[1.0] * 9] * 19
    lut = dataclasses.replace(LUT, matrix=tuple(tuple(r) for r in m))
    base = lut.fixed_us + 19
    band, bins, n = (base + 19.5, base + 79.5), 6, 1200
    archs = uniform_in_band(lut, *band, k=n, seed=3, bins=bins)
    values = [10 * a.indices[0] + 3 * a.indices[1] + a.indices[2] for a in archs]
    mult = {}
    for a in range(9):
        for b in range(9):
            for c in range(9):
                mult[10 * a + 3 * b + c] = mult.get(10 * a + 3 * b + c, 0) + 1
    chi2, df = 0.0, -bins
    for j in range(bins):
        lo, hi = 19.5 + 10 * j, 29.5 + 10 * j
        inside = {v: m for v, m in mult.items() if lo < v < hi}
        total = sum(inside.values())
        for v, m in inside.items():
            e = n / bins * m / total
            chi2 += (sum(x == v for x in values) - e) ** 2 / e
            df += 1
    assert all(19.5 < v < 79.5 for v in values)
    assert chi2 < _critical(df), (chi2, df)
    assert _chi2(np.array(values, dtype=float), (19.5, 79.5), bins)[0] < _critical(bins - 1)


def test_deterministic_distinct_and_fast():
    t0 = time.perf_counter()
    first = random_within(LUT, *BAND, k=8, seed=7)
    elapsed = time.perf_counter() - t0
    assert elapsed < 10, f"{elapsed:.2f} s for 8 draws"  # about 0.1 s on an idle core
    assert first == random_within(LUT, *BAND, k=8, seed=7)
    assert first != random_within(LUT, *BAND, k=8, seed=8)
    assert len(set(first)) == 8 and all(BAND[0] <= predict(LUT, a)["latency_us"] <= BAND[1] for a in first)


@pytest.mark.parametrize(("band", "words"), [
    ((0.5 * LO, 1.2 * LO), "outside the table's latency range"),
    ((TARGET, TARGET), "lo < hi"),
    ((LO, LO + 0.005 * (HI - LO)), "no architecture of the table has latency in"),
])
def test_bands_it_cannot_fill_are_refused(band, words):
    with pytest.raises(BandError, match=words) as e:
        random_within(LUT, *band, k=4)
    assert "\n" not in str(e.value)


def test_a_sparse_extreme_bin_is_refused_not_bent():
    slow = (HI - 0.015 * (HI - LO), HI)  # the slowest corner: a few architectures per bin
    with pytest.raises(BandError, match="no new architecture with latency in"):
        uniform_in_band(LUT, *slow, k=100, seed=0, bins=5, tries=300)
