"""The cost of a v2 search's distribution over architectures: latency (a grid table), FLOPs or
parameters, as the exact expectation over independent draws (``FBNETV2.md`` §2, §6.2).

A draw picks the resolution r, the stem width s, per layer l a block b, an output width j and an
expansion e, and the head width h, each independently with the weights of a :class:`MixWeights` (a
Gumbel draw, or softmax(logits)). An op's cost depends on the widths on both sides of it, so the
expected cost of layer l is **bilinear in the previous and the current width weights**::

    E[cost] = sum_r rho_r ( sum_s sigma_s STEM[r, s]
                          + sum_l sum_{i,b,j,e} g^{l-1}_i m^l_b g^l_j h^l_e T_l[r, i, b, j, e]
                          + sum_{i,h} g^L_i eta_h HEAD[r, i, h] ) + sum_h eta_h FC[h]

with T_l the cost of the op ``space.layer_op(l, r, C_i, (b, C_j, e))`` (``g^{-1}`` is the stem's
width weights). This is exact for any per-op cost, and differentiable in every weight. It is never
a lookup at a fractional width: a stair-stepped latency table is priced only at the widths it has.

The paper propagates effective shapes instead (``C_eff = sum_i g_i C_i`` layer to layer, FLOPs =
``k^2 h w C_in_eff C_out_eff / groups``). That equals the expectation above when an op's cost is
bilinear in (C_in, C_out) (:func:`effective_widths`; tests/test_search_masking.py checks it).
The counted MACs and weights of :mod:`fbnet.ops_v2` are not quite bilinear (inner widths rounded to
multiples of 8, the squeeze-excite's width, identity skips free, the first 1x1 dropped when the
inner width equals the input's), so the FLOPs and params costs use the exact form too; both are the
expectation of ``space.arch_mflops`` / ``space.arch_params`` over the draws.

Prices: :func:`flops_price` (MFLOPs, multiply-adds), :func:`params_price` (millions of weights),
:func:`table_price` (microseconds from a mapping ``op key -> latency_us`` over the space's grid,
:func:`fbnet.space_v2.enumerate_ops`'s keys; identity skips cost 0 unless the table gives them a value,
as the served v2 tables do). :func:`cost_tables` builds the tensors once per search;
:func:`expected_cost` is the per-step term; :func:`cost_range` the cheapest and dearest architecture.

With :func:`search.loss.fbnet_loss` mind its floor: it clamps the cost to at least e before the log,
and fbnetv2-cifar's architectures hold 0.32-4.2 M parameters, so a params search in these units
belongs with the relative target hinge (:func:`search.loss.target_loss`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from fbnet.arch_v2 import ArchV2, LayerChoice
from fbnet.ops_v2 import OpV2, mid_width
from fbnet.space_v2 import SpaceV2
from search.masking import MixWeights, one_hot_weights

Price = Callable[[OpV2], float]
COSTS: dict[str, str] = {"latency": "us", "flops": "MFLOPs", "params": "M params"}


class CostError(ValueError):
    """A cost the space or the table cannot give (one-line message)."""


def flops_price(op: OpV2) -> float:
    """Millions of multiply-adds (the paper's MFLOPs)."""
    return op.macs / 1e6


def params_price(op: OpV2) -> float:
    """Millions of convolution and linear weights (the released models' parameter count)."""
    return op.params / 1e6


def table_price(table: Mapping[str, float], space: SpaceV2) -> Price:
    """Latency in microseconds from ``table`` (op key -> us). Every op of ``space``'s grid but the
    identity skips must be there; an identity skip the table lacks costs 0 (nothing runs)."""
    missing = [k for k, op in space.grid.items() if k not in table and not op.is_identity]
    if missing:
        raise CostError(f"the latency table lacks {len(missing)} of the {len(space.grid)} ops of {space.name}'s grid "
                        f"(e.g. {missing[0]}): a latency search needs the space's v2 grid")

    def price(op: OpV2) -> float:
        return float(table[op.key]) if op.key in table else 0.0

    return price


def price_for(cost: str, space: SpaceV2, table: Mapping[str, float] | None = None) -> Price:
    """The price of ``cost`` (latency|flops|params); latency needs ``table``."""
    if cost == "flops":
        return flops_price
    if cost == "params":
        return params_price
    if cost == "latency":
        if table is None:
            raise CostError(f"a latency cost needs a table with {space.name}'s v2 grid")
        return table_price(table, space)
    raise CostError(f"unknown cost {cost!r}: use {', '.join(COSTS)}")


@dataclass(frozen=True)
class CostTables:
    """Per-op costs of a space laid out for :func:`expected_cost` (float64): ``stem`` [R, S],
    ``layers`` one [R, I, B, J, E] per layer, ``head`` [R, I_last, H], ``fc`` [H]."""

    unit: str
    stem: torch.Tensor
    layers: tuple[torch.Tensor, ...]
    head: torch.Tensor
    fc: torch.Tensor

    def to(self, device: torch.device | str) -> CostTables:
        return CostTables(self.unit, self.stem.to(device), tuple(t.to(device) for t in self.layers),
                          self.head.to(device), self.fc.to(device))


class _Cached:
    """``price`` memoised by op key, and a layer's ops by their shape (layers and resolutions repeat
    ops: fbnetv2-cifar's 36 k layer positions hold 9 k distinct ops)."""

    def __init__(self, price: Price):
        self.price, self.seen, self.shapes = price, {}, {}

    def __call__(self, op: OpV2) -> float:
        key = op.key
        if key not in self.seen:
            self.seen[key] = float(self.price(op))
        return self.seen[key]

    def layer(self, space: SpaceV2, layer: int, res: int, cin: int, choice: tuple) -> float:
        """The cost of ``choice`` = (block, width, expansion) at ``layer``, input width ``cin``."""
        shape = (space.layer_hw(res)[layer], space.layers[layer].stride, cin, *choice)
        if shape not in self.shapes:
            self.shapes[shape] = self(space.layer_op(layer, res, cin, LayerChoice(*choice)))
        return self.shapes[shape]


def _layer_table(space: SpaceV2, layer: int, price: _Cached) -> torch.Tensor:
    cins, couts = space.input_widths(layer), space.layers[layer].widths

    def cell(res, cin, block, cout):  # [E]: the expansions (a skip has none: one value for all)
        if block == "skip":
            return [price.layer(space, layer, res, cin, ("skip", cout))] * len(space.expansions)
        return [price.layer(space, layer, res, cin, (block, cout, x)) for x in space.expansions]

    return torch.tensor([[[[cell(res, cin, block, cout) for cout in couts] for block in space.blocks] for cin in cins]
                         for res in space.resolutions], dtype=torch.float64)


def cost_tables(space: SpaceV2, price: Price, unit: str = "") -> CostTables:
    """Every op cost a search over ``space`` reads, once (``price``: :func:`price_for`)."""
    cached = _Cached(price)
    res, stems, heads = space.resolutions, space.stem_widths.options, space.head_widths
    stem = torch.tensor([[cached(space.stem_op(r, s)) for s in stems] for r in res], dtype=torch.float64)
    layers = tuple(_layer_table(space, i, cached) for i in range(space.num_layers))
    head = torch.tensor([[[cached(space.head_op(r, c, h)) for h in heads] for c in space.layers[-1].widths]
                         for r in res], dtype=torch.float64)
    fc = torch.tensor([cached(space.fc_op(h)) for h in heads], dtype=torch.float64)
    return CostTables(unit, stem, layers, head, fc)


def expected_cost(tables: CostTables, w: MixWeights) -> torch.Tensor:
    """E[cost] under independent draws with the weights ``w`` (module docstring), a scalar in the
    weights' dtype, differentiable in every weight."""
    return _expected(tables, w).to(w.stem.dtype)


def _expected(tables: CostTables, w: MixWeights) -> torch.Tensor:
    d = tables.stem.dtype
    rho = w.resolution.to(d)
    total = torch.einsum("r,s,rs->", rho, w.stem.to(d), tables.stem)
    for i, t in enumerate(tables.layers):
        total = total + torch.einsum("r,i,b,j,e,ribje->", rho, w.width_in(i).to(d), w.blocks[i].to(d),
                                     w.widths[i].to(d), w.expansions[i].to(d), t)
    head = w.head.to(d)
    total = total + torch.einsum("r,i,h,rih->", rho, w.widths[-1].to(d), head, tables.head) + head @ tables.fc
    return total


def arch_cost(tables: CostTables, space: SpaceV2, arch: ArchV2) -> float:
    """The cost of one architecture (the expectation at its one-hot weights)."""
    return float(_expected(tables, one_hot_weights(space, arch)))


def _chain_extreme(tables: CostTables, r: int, pick) -> float:
    """The cheapest (``pick`` = torch.amin) or dearest (torch.amax) architecture at resolution ``r``: a
    dynamic programme over the layers with the width as the state."""
    v = tables.stem[r]
    for t in tables.layers:
        pair = pick(t[r], dim=(1, 3))  # [I, J]: the best block and expansion for each width pair
        v = pick(v[:, None] + pair, dim=0)
    return float(pick(v[:, None] + tables.head[r] + tables.fc[None, :]))


def cost_range(tables: CostTables) -> tuple[float, float]:
    """(cheapest, dearest) cost over every architecture of the space (exact)."""
    n = tables.stem.shape[0]
    lo = min(_chain_extreme(tables, r, torch.amin) for r in range(n))
    hi = max(_chain_extreme(tables, r, torch.amax) for r in range(n))
    return lo, hi


def effective_widths(space: SpaceV2, w: MixWeights) -> dict:
    """The paper's effective shapes under ``w``: resolution, stem width, per layer the input, inner and
    output widths (``sum g C``; the inner width over the inverted-residual blocks' weights), head."""
    def eff(options, g) -> float:
        return float(sum(float(p) * c for p, c in zip(g, options, strict=True)))

    layers = []
    ir = torch.tensor([b != "skip" for b in space.blocks])
    for i, ls in enumerate(space.layers):
        g_in, e = w.width_in(i), w.expansions[i]
        mids = sum(float(g_in[a]) * float(e[b]) * mid_width(c, x) for a, c in enumerate(space.input_widths(i))
                   for b, x in enumerate(space.expansions))
        p_ir = float(w.blocks[i][ir].sum()) / max(float(w.blocks[i].sum()), 1e-12)
        layers.append({"cin": eff(space.input_widths(i), g_in), "mid": mids * p_ir, "cout": eff(ls.widths, w.widths[i])})
    return {"resolution": eff(space.resolutions, w.resolution), "stem": eff(space.stem_widths.options, w.stem),
            "layers": layers, "head": eff(space.head_widths, w.head)}


__all__ = ["COSTS", "CostError", "CostTables", "Price", "arch_cost", "cost_range", "cost_tables", "effective_widths",
           "expected_cost", "flops_price", "params_price", "price_for", "table_price"]
