"""A device double with a known SIMD staircase for the v2 latency model (tests and bench/v2_model.py).

Latency of an FBNetV2 op on an imaginary SIMD CPU: every channel count is rounded up to a multiple of
``step`` (the vector width) before its multiply-adds are counted, depthwise work runs slower per
multiply-add than 1x1 work, small spatial sizes run less efficiently, an expanded activation that
outgrows the L2 cache runs slower (a threshold no linear term has), each kernel launch costs a constant, h-swish costs more than ReLU. ``measure``
evaluates it with multiplicative noise, as a profiling run would report a median.
"""

from __future__ import annotations

import math
import random

from fbnet.ops_v2 import OpV2, se_width

US_PER_MAC = 4e-5  # 25 GMAC/s on 1x1 convolutions at full efficiency
DW_SLOWDOWN = 4.0
LAUNCH_US = 3.0
L2_BYTES = 256 * 1024  # an expanded activation larger than this spills: its 1x1 and depthwise run 1.3x slower
SPILL = 1.3


def _pad(c: int, step: int) -> int:
    return -(-c // step) * step


def _eff(hw: int) -> float:
    return hw / (hw + 24.0)


def _ir(op: OpV2, step: int) -> float:
    ho, wo = op.out_hw
    hw_in, hw_out = op.h * op.w, ho * wo
    mid, cin, cout = _pad(op.mid, step), _pad(op.cin, step), _pad(op.cout, step)
    us, kernels = 0.0, 2
    spill = SPILL if mid * hw_in * 4 > L2_BYTES else 1.0
    if op.has_pw:
        us += cin * mid * hw_in * US_PER_MAC / _eff(hw_in) * spill
        kernels += 1
    us += mid * op.kernel ** 2 * hw_out * US_PER_MAC * DW_SLOWDOWN / _eff(hw_out) * spill
    if op.se:
        us += (mid * hw_out + 2 * mid * _pad(se_width(op.mid), step)) * US_PER_MAC * 2
        kernels += 3
    us += mid * cout * hw_out * US_PER_MAC / _eff(hw_out)
    act = 2.5e-4 if op.act == "hswish" else 1e-4
    us += (op.mid * hw_in * op.has_pw + op.mid * hw_out) * act
    return us + kernels * LAUNCH_US


def latency_us(op: OpV2, step: int = 8) -> float:
    """The double's noiseless latency of ``op`` (us); identity skips cost 0."""
    if op.is_identity:
        return 0.0
    ho, wo = op.out_hw
    if op.block.startswith("ir_k"):
        return _ir(op, step)
    if op.block == "skip":
        return LAUNCH_US + _pad(op.cin, step) * _pad(op.cout, step) * ho * wo * US_PER_MAC / _eff(ho * wo)
    if op.block == "conv_k3_hs":
        return LAUNCH_US + op.cin * _pad(op.cout, step) * 9 * ho * wo * US_PER_MAC * 2 / _eff(ho * wo)
    if op.block == "ir_pool_hs":
        hw = op.h * op.w
        return 3 * LAUNCH_US + (_pad(op.cin, step) * _pad(op.mid, step) * hw / _eff(hw) + op.mid * op.cout) * US_PER_MAC
    return LAUNCH_US + op.cin * op.cout * US_PER_MAC  # fc


def measure(op: OpV2, rng: random.Random, step: int = 8, noise: float = 0.02) -> float:
    """One reported median: the double's latency times lognormal noise of ``noise`` (sigma)."""
    return latency_us(op, step) * math.exp(rng.gauss(0.0, noise))


def measurement(key: str, median_us: float) -> dict:
    """A measurement row of the runs API for ``key`` with median ``median_us``."""
    return {"key": key, "n": 20, "median_us": median_us, "mean_us": median_us, "std_us": 0.01 * median_us,
            "min_us": 0.97 * median_us, "p10_us": 0.98 * median_us, "p90_us": 1.02 * median_us}
