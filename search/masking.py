"""DMaskingNAS's masked supernet for the FBNetV2 spaces (``FBNETV2.md`` §1-2): widths, expansions
and the input resolution searched at nearly constant memory.

**One max-width module per block type.** Every searchable layer holds one module per block type of
the space (``ir_k{3,5}[_sehsig][_hs]``, ``skip``), built at the layer's largest input width, largest
inner width and largest output width. The block types are mixed as in FBNet (``sum_b m_b y_b``);
widths and expansions are **masks** over the max-width module's channels: by linearity
``sum_i g_i (b(x) o 1_i) = b(x) o M`` with ``M = sum_i g_i 1_i`` (``1_i``: the first C_i channels on).

**The masks** of layer l, each bilinear in the previous layer's width weights g^{l-1} (the stem's
for layer 0) and this layer's weights (width g^l or expansion h^l), so that they are the masks of
independent draws, exactly as the cost prices them (:mod:`search.v2_cost`):

* output ``M_out = sum_j g^l_j 1_{C_j}``, after the projection's BN and before the residual add;
  folded into that BN's affine (``BN(z) o m`` is a BN with scale ``gamma m`` and shift ``beta m``),
  together with the block weight m_b, so it costs no pass over the activations;
* expansion ``M_mid = sum_{i,e} g^{l-1}_i h^l_e 1_{mid(C_i, e)}`` after the depthwise stage's BN and
  activation, before the squeeze-excite and the projection (the expansion is relative to the actual
  input width, :mod:`fbnet.arch_v2`); folded into the BN for ReLU (``relu(m z) = m relu(z)`` for
  m >= 0), a multiply after h-swish; the squeeze-excite's bottleneck gets ``M_se`` the same way;
* where the child's structure changes with the widths, the mask of each structure: the first 1x1
  runs only where ``mid != cin`` (``M_pw``; the input goes straight to the depthwise where they are
  equal, ``M_bypass``), the residual of an inverted residual and the identity ``skip`` exist only
  where stride is 1 and ``C_i == C_j`` (``M_id``); elsewhere ``skip`` is its 1x1 projection
  (``M_proj``).

With one-hot weights a masked layer therefore computes exactly the child's block at the chosen
widths with the max-width weights sliced (:func:`inherit_child`; tests/test_search_masking.py); with
soft weights it is the paper's weight-shared approximation.

**Resolution** is chosen at the input. The batch arrives at the space's largest resolution R; for each
option r the stem runs on the nearest-neighbour subsample of the input (r x r), and its output is
interspersed with zeros back to the stem's output size at R (its values at rows and columns
``floor(k H / h)``, zeros between), weighted by the resolution weight rho_r and summed (subsample ->
compute -> intersperse). **Later stages see it**: they run once, at R's sizes, on the mixed map.
Why: wrapping every layer the same way would hold one set of activations per resolution (``sum_r
r^2 / R^2`` of the network's memory and compute, 2.3x for fbnetv2-cifar's 24/28/32), the cost the
masks exist to avoid, and resolutions as close as 28 and 32 share most grid positions, so their
interspersed maps would mix anyway. The price is the receptive-field misalignment the paper fixes
at the op it wraps: later 3x3 convolutions see zero rows and columns in the smaller resolutions'
components, so the supernet's accuracy signal for r < R is approximate. The cost is not: it prices
every layer at each resolution's own sizes. The child runs at its resolution without masks.

**Cost of a step**: every block type of a layer runs at max width (the paper's mix over block
types), except in a weight step with a hard draw (``sample(tau, hard=True).detach()``), where the
blocks weighted 0 are skipped: one block per layer, widths still masked.

**One draw per step**: :meth:`V2ArchParams.sample` gives a :class:`MixWeights` (resolution, stem width,
per layer block, width and expansion, head width), which drives both :meth:`MaskedSupernet.forward`
and :func:`search.v2_cost.expected_cost`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fbnet.arch_v2 import ArchV2, ArchV2Error, LayerChoice
from fbnet.blocks import ConvBNAct, FBNetV2Net, SqueezeExcite, init_weights
from fbnet.ops_v2 import V2_SPECS, BlockSpecV2, mid_width, se_width
from fbnet.space_v2 import SpaceV2


@dataclass(frozen=True)
class MixWeights:
    """One set of weights over every choice of a v2 space (a Gumbel draw, softmax probabilities or a
    one-hot architecture): ``resolution`` [R], ``stem`` [S], ``blocks`` [L, B], ``widths`` one [W_l]
    per layer, ``expansions`` [L, E], ``head`` [H]."""

    resolution: torch.Tensor
    stem: torch.Tensor
    blocks: torch.Tensor
    widths: tuple[torch.Tensor, ...]
    expansions: torch.Tensor
    head: torch.Tensor

    def width_in(self, layer: int) -> torch.Tensor:
        """The weights of ``layer``'s input widths: the previous layer's output (the stem's for 0)."""
        return self.stem if layer == 0 else self.widths[layer - 1]

    def detach(self) -> MixWeights:
        return MixWeights(self.resolution.detach(), self.stem.detach(), self.blocks.detach(),
                          tuple(w.detach() for w in self.widths), self.expansions.detach(), self.head.detach())


def _one_hot(options, value, what: str) -> torch.Tensor:
    if value not in options:
        raise ArchV2Error(f"{what} {value} is not one of the options {list(options)}")
    out = torch.zeros(len(options))
    out[list(options).index(value)] = 1.0
    return out


def one_hot_weights(space: SpaceV2, arch: ArchV2) -> MixWeights:
    """The weights that select ``arch`` (an on-grid architecture of ``space``); a skip layer's
    expansion weight is put on the first option (a skip has none, its cost and output ignore it)."""
    space.check_arch(arch)
    if space.off_grid(arch):
        raise ArchV2Error(f"layers {space.off_grid(arch)} have expansions off {space.name}'s grid {list(space.expansions)}")
    exps = [_one_hot(space.expansions, c.expansion if c.expansion is not None else space.expansions[0],
                     f"layer {i} expansion") for i, c in enumerate(arch.layers)]
    return MixWeights(
        _one_hot(space.resolutions, arch.resolution, "resolution"),
        _one_hot(space.stem_widths.options, arch.stem, "stem width"),
        torch.stack([_one_hot(space.blocks, c.block, f"layer {i} block") for i, c in enumerate(arch.layers)]),
        tuple(_one_hot(ls.widths, c.width, f"layer {i} width") for i, (ls, c) in enumerate(zip(space.layers, arch.layers, strict=True))),
        torch.stack(exps), _one_hot(space.head_widths, arch.head, "head width"))


class V2ArchParams(nn.Module):
    """The logits of every distribution of a v2 search, all zero (uniform) at the start:
    ``resolution``, ``stem``, ``blocks`` [L, B], ``widths`` [L, max W] (padded; a layer's options beyond
    its own count are masked out), ``expansions`` [L, E], ``head``."""

    def __init__(self, space: SpaceV2):
        super().__init__()
        self.space_name = space.name
        counts = [len(ls.widths) for ls in space.layers]
        self.counts = tuple(counts)
        self.resolution = nn.Parameter(torch.zeros(len(space.resolutions)))
        self.stem = nn.Parameter(torch.zeros(len(space.stem_widths.options)))
        self.blocks = nn.Parameter(torch.zeros(space.num_layers, len(space.blocks)))
        self.widths = nn.Parameter(torch.zeros(space.num_layers, max(counts)))
        self.expansions = nn.Parameter(torch.zeros(space.num_layers, len(space.expansions)))
        self.head = nn.Parameter(torch.zeros(len(space.head_widths)))
        pad = torch.arange(max(counts))[None, :] >= torch.tensor(counts)[:, None]
        self.register_buffer("width_pad", pad, persistent=False)

    def _logits(self) -> list[torch.Tensor]:
        widths = self.widths.masked_fill(self.width_pad, float("-inf"))
        return [self.resolution, self.stem, self.blocks, widths, self.expansions, self.head]

    def _weights(self, parts: list[torch.Tensor]) -> MixWeights:
        res, stem, blocks, widths, exps, head = parts
        return MixWeights(res, stem, blocks, tuple(widths[i, :n] for i, n in enumerate(self.counts)), exps, head)

    def sample(self, tau: float, hard: bool = False) -> MixWeights:
        """One Gumbel-softmax draw of every distribution (straight-through one-hot with ``hard``)."""
        return self._weights([F.gumbel_softmax(t, tau=tau, hard=hard, dim=-1) for t in self._logits()])

    def probs(self) -> MixWeights:
        return self._weights([torch.softmax(t, -1) for t in self._logits()])

    @torch.no_grad()
    def widest(self) -> MixWeights:
        """One-hot weights of the widest path: the largest resolution, stem, width, expansion and head
        everywhere, each layer's most likely block (no gradient; the sandwich's anchor)."""
        def last(t: torch.Tensor) -> torch.Tensor:
            return F.one_hot(torch.full(t.shape[:-1], t.shape[-1] - 1, dtype=torch.long), t.shape[-1]).to(t)

        blocks = F.one_hot(self.blocks.argmax(-1), self.blocks.shape[-1]).to(self.blocks)
        widths = tuple(last(self.widths[i, :n]) for i, n in enumerate(self.counts))
        return MixWeights(last(self.resolution), last(self.stem), blocks, widths, last(self.expansions), last(self.head))

    def mean_entropy(self) -> torch.Tensor:
        """The mean entropy (nats) over every distribution (each layer's blocks, widths and expansions,
        the resolution, stem and head), with its gradient (the theta step's entropy term)."""
        ents = []
        for t in self._logits():
            logp = torch.log_softmax(t, -1)
            p = logp.exp()
            ents.append(-(p * logp.masked_fill(p == 0, 0.0)).sum(-1).reshape(-1))
        return torch.cat(ents).mean()

    @torch.no_grad()
    def entropies(self) -> dict[str, float]:
        """The largest entropy (nats) of each kind of distribution: resolution, stem, blocks, widths,
        expansions, head (a search has converged when every one is small)."""
        names = ("resolution", "stem", "blocks", "widths", "expansions", "head")
        out = {}
        for name, p in zip(names, [torch.softmax(t, -1) for t in self._logits()], strict=True):
            entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
            out[name] = float(entropy.max())
        return out

    @torch.no_grad()
    def argmax_arch(self, space: SpaceV2) -> ArchV2:
        """The per-distribution argmax (a skip layer has no expansion)."""
        p = self.probs()

        def pick(options, w):
            return options[int(w.argmax())]

        layers = []
        for i, ls in enumerate(space.layers):
            block = pick(space.blocks, p.blocks[i])
            e = None if block == "skip" else pick(space.expansions, p.expansions[i])
            layers.append(LayerChoice(block, pick(ls.widths, p.widths[i]), e))
        return ArchV2(pick(space.resolutions, p.resolution), pick(space.stem_widths.options, p.stem), tuple(layers),
                      pick(space.head_widths, p.head))


# ---------------------------------------------------------------------------------------------
# Masks: M = a^T K b with K[i, j, c] = 1 for c < n(i, j) (0 everywhere where n is 0).


def _indicator(sizes, total: int) -> torch.Tensor:
    n = torch.tensor(sizes, dtype=torch.long)
    return (torch.arange(total) < n[..., None]).float()


def _pair_mask(a: torch.Tensor, b: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return (a[:, None] * b[None, :]).reshape(-1) @ k.reshape(-1, k.shape[-1])


def _col(m: torch.Tensor) -> torch.Tensor:
    return m.view(1, -1, 1, 1)


def _fit(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``x`` cut or zero-padded to ``channels`` channels."""
    c = x.shape[1]
    return x[:, :channels] if c >= channels else F.pad(x, (0, 0, 0, 0, 0, channels - c))


def _scaled_bn(bn: nn.BatchNorm2d, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``bn(x) * scale`` per channel, as one batch norm with the scaled affine."""
    if bn.training:
        bn.num_batches_tracked.add_(1)
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight * scale, bn.bias * scale, bn.training,
                        bn.momentum, bn.eps)


def _cba(seq: nn.Sequential, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A :class:`fbnet.blocks.ConvBNAct` whose output is multiplied by the channel ``mask`` (>= 0):
    folded into the BN without an activation or with ReLU, multiplied after any other."""
    z = seq[0](x)
    act = seq[2] if len(seq) > 2 else None
    if act is None or isinstance(act, nn.ReLU):
        z = _scaled_bn(seq[1], z, mask)
        return z if act is None else act(z)
    return act(seq[1](z)) * _col(mask)


class LayerMasks(NamedTuple):
    """A layer's masks for one draw (module docstring); None where the structure never occurs."""

    out: torch.Tensor
    mid: torch.Tensor
    se: torch.Tensor | None
    pw: torch.Tensor | None
    bypass: torch.Tensor | None
    ident: torch.Tensor | None
    proj: torch.Tensor | None


@dataclass(frozen=True)
class MaxShape:
    """The max-width shape of a layer's modules."""

    cin: int
    mid: int
    se: int
    cout: int
    stride: int
    hw: int


class MaskedIR(nn.Module):
    """One inverted-residual block type at max width (the parts and names of
    :class:`fbnet.blocks.IRFBlockV2`, whose first 1x1 always exists here); the residual is the layer's."""

    def __init__(self, spec: BlockSpecV2, s: MaxShape):
        super().__init__()
        self.pw = ConvBNAct(s.cin, s.mid, act=spec.act)
        self.dw = ConvBNAct(s.mid, s.mid, s.stride, spec.kernel, groups=s.mid, act=spec.act)
        self.se = SqueezeExcite(s.mid, s.se, (s.hw - 1) // s.stride + 1, spec.act) if spec.se else None
        self.pwl = ConvBNAct(s.mid, s.cout, act=None)
        self.mid = s.mid

    def forward(self, x: torch.Tensor, k: LayerMasks, weight: torch.Tensor) -> torch.Tensor:
        h = _cba(self.pw, x, k.pw) if k.pw is not None else None
        if k.bypass is not None:
            b = _fit(x, self.mid) * _col(k.bypass)
            h = b if h is None else h + b
        h = _cba(self.dw, h, k.mid)
        if self.se is not None:
            se = self.se
            s = se.act(se.reduce(se.pool(h))) * _col(k.se)
            h = h * se.gate(se.expand(s))
        return _cba(self.pwl, h, k.out * weight)


class MaskedSkip(nn.Module):
    """``skip``: its 1x1 projection (conv + BN + ReLU) at max width where some width pair needs it;
    its identity part is the layer's ``M_id`` term."""

    def __init__(self, s: MaxShape, needs_proj: bool):
        super().__init__()
        self.proj = ConvBNAct(s.cin, s.cout, s.stride, 1, act="relu") if needs_proj else None

    def forward(self, x: torch.Tensor, k: LayerMasks, weight: torch.Tensor) -> torch.Tensor | None:
        return None if self.proj is None else _cba(self.proj, x, k.proj * weight)


def _optional(k: torch.Tensor) -> torch.Tensor | None:
    return k if bool(k.any()) else None


class MaskedLayer(nn.Module):
    """One searchable layer of a v2 space: a max-width module per block type, mixed by the block
    weights, masked by the width and expansion weights (module docstring)."""

    def __init__(self, space: SpaceV2, layer: int):
        super().__init__()
        cins, couts = space.input_widths(layer), space.layers[layer].widths
        stride = space.layers[layer].stride
        mids = [[mid_width(c, e) for e in space.expansions] for c in cins]
        mid = max(map(max, mids))
        s = MaxShape(max(cins), mid, se_width(mid), max(couts), stride, space.layer_hw(max(space.resolutions))[layer])
        self.shape = s
        same = [[c if stride == 1 and c == ci else 0 for c in couts] for ci in cins]
        self._buffers_for(mids, couts, cins, same)
        self.blocks = nn.ModuleList(
            MaskedSkip(s, bool(self.k_proj.any())) if b == "skip" else MaskedIR(V2_SPECS[b], s) for b in space.blocks)

    def _buffers_for(self, mids, couts, cins, same) -> None:
        s = self.shape
        self.register_buffer("k_out", _indicator(couts, s.cout), persistent=False)
        self.register_buffer("k_mid", _indicator(mids, s.mid), persistent=False)
        self.register_buffer("k_se", _indicator([[se_width(m) for m in row] for row in mids], s.se), persistent=False)
        pw = [[m if m != c else 0 for m in row] for c, row in zip(cins, mids, strict=True)]
        bypass = [[m if m == c else 0 for m in row] for c, row in zip(cins, mids, strict=True)]
        self.register_buffer("k_pw", _optional(_indicator(pw, s.mid)), persistent=False)
        self.register_buffer("k_bypass", _optional(_indicator(bypass, s.mid)), persistent=False)
        self.register_buffer("k_ident", _optional(_indicator(same, s.cout)), persistent=False)
        proj = [[c if not sm else 0 for c, sm in zip(couts, row, strict=True)] for row in same]
        self.register_buffer("k_proj", _indicator(proj, s.cout), persistent=False)

    def masks(self, g_in: torch.Tensor, g_out: torch.Tensor, e: torch.Tensor) -> LayerMasks:
        def pair(b, k):
            return None if k is None else _pair_mask(g_in, b, k)

        return LayerMasks(g_out @ self.k_out, pair(e, self.k_mid), pair(e, self.k_se), pair(e, self.k_pw),
                          pair(e, self.k_bypass), pair(g_out, self.k_ident), pair(g_out, self.k_proj))

    def forward(self, x: torch.Tensor, g_in: torch.Tensor, g_out: torch.Tensor, e: torch.Tensor,
                m: torch.Tensor, idle: list[bool] | None = None) -> torch.Tensor:
        """``x``: the previous layer's masked output (max width); ``g_in``/``g_out``: input/output width
        weights; ``e``: expansion weights; ``m``: block weights; ``idle``: blocks not to run (their
        weight is 0 and needs no gradient: their output would be exactly 0)."""
        k = self.masks(g_in, g_out, e)
        out = None if k.ident is None else _fit(x, self.shape.cout) * _col(k.ident * m.sum())
        for b, block in enumerate(self.blocks):
            if idle is not None and idle[b]:
                continue
            y = block(x, k, m[b])
            if y is not None:
                out = y if out is None else out + y
        return out


class MaskedHead(nn.Module):
    """The ``ir_pool_hs`` head at max width (the names of :class:`fbnet.blocks.IRPoolHead`): its inner
    width masked by the last layer's width weights, its output by the head width weights."""

    def __init__(self, space: SpaceV2):
        super().__init__()
        cins = space.layers[-1].widths
        mids = [mid_width(c, space.head_expansion) for c in cins]
        cout = max(space.head_widths)
        self.pw = ConvBNAct(max(cins), max(mids), act="hswish")
        self.pool = nn.AvgPool2d(space.layer_hw(max(space.resolutions))[-1])
        self.pwl = nn.Conv2d(max(mids), cout, 1, bias=False)
        self.act = nn.Hardswish()
        self.register_buffer("k_mid", _indicator(mids, max(mids)), persistent=False)
        self.register_buffer("k_out", _indicator(space.head_widths, cout), persistent=False)

    def forward(self, x: torch.Tensor, g_in: torch.Tensor, g_head: torch.Tensor) -> torch.Tensor:
        h = _cba(self.pw, x, g_in @ self.k_mid)
        return (self.act(self.pwl(self.pool(h))) * _col(g_head @ self.k_out)).flatten(1)


def _grid_index(small: int, big: int) -> torch.Tensor:
    """Nearest-neighbour positions of a ``small`` grid in a ``big`` one: floor(k * big / small)."""
    return torch.div(torch.arange(small) * big, small, rounding_mode="floor")


def _intersperse(y: torch.Tensor, idx: torch.Tensor, size: int) -> torch.Tensor:
    """``y`` (h x h) placed at rows and columns ``idx`` of a zero ``size`` x ``size`` map."""
    n, c, h, _ = y.shape
    rows = y.new_zeros(n, c, h, size).index_copy(3, idx, y)
    return y.new_zeros(n, c, size, size).index_copy(2, idx, rows)


class MaskedSupernet(nn.Module):
    """The masked supernet of a v2 space: ``forward(x, w)`` with ``x`` at the space's largest
    resolution and ``w`` a :class:`MixWeights` (module docstring)."""

    def __init__(self, space: SpaceV2):
        super().__init__()
        self.space_name = space.name
        self.resolutions = tuple(space.resolutions)
        self.max_res = max(space.resolutions)
        stem = max(space.stem_widths.options)
        self.stem = ConvBNAct(space.in_channels, stem, space.stem_stride, 3, act="hswish")
        self.register_buffer("k_stem", _indicator(space.stem_widths.options, stem), persistent=False)
        big = (self.max_res - 1) // space.stem_stride + 1
        self.stem_out = big
        self._res_idx = {r: (_grid_index(r, self.max_res), _grid_index((r - 1) // space.stem_stride + 1, big))
                         for r in self.resolutions if r != self.max_res}
        self.layers = nn.ModuleList(MaskedLayer(space, i) for i in range(space.num_layers))
        self.head = MaskedHead(space)
        self.fc = nn.Linear(max(space.head_widths), space.num_classes)
        init_weights(self)

    def _stem(self, x: torch.Tensor, w: MixWeights) -> torch.Tensor:
        """sum_r rho_r intersperse_r(stem(subsample_r(x))), times the stem's width mask."""
        mask = w.stem @ self.k_stem
        out = None
        for k, r in enumerate(self.resolutions):
            if r == self.max_res:
                y = self.stem(x)
            else:
                idx_in, idx_out = (t.to(x.device) for t in self._res_idx[r])
                small = x.index_select(2, idx_in).index_select(3, idx_in)
                y = _intersperse(self.stem(small), idx_out, self.stem_out)
            y = y * _col(mask * w.resolution[k])
            out = y if out is None else out + y
        return out

    def forward(self, x: torch.Tensor, w: MixWeights) -> torch.Tensor:
        """Logits of ``x`` under the weights ``w``. A block whose weight is 0 in a ``w`` without a
        gradient to the block weights (a hard draw for the weight step) is not run: the single path
        over block types, at the same result."""
        if x.shape[-1] != self.max_res or x.shape[-2] != self.max_res:
            raise ValueError(f"the masked supernet of {self.space_name} takes {self.max_res} px inputs, got "
                             f"{tuple(x.shape[-2:])}")
        x = self._stem(x, w)
        # block weights without a gradient (the weight step): blocks weighted 0 (a hard draw) do not run
        idle = (w.blocks == 0).tolist() if not w.blocks.requires_grad else [None] * len(self.layers)
        for i, layer in enumerate(self.layers):
            x = layer(x, w.width_in(i), w.widths[i], w.expansions[i], w.blocks[i], idle[i])
        return self.fc(self.head(x, w.widths[-1], w.head))


# ---------------------------------------------------------------------------------------------
# The explicit child with the supernet's weights (what a one-hot draw computes).


@torch.no_grad()
def copy_sliced(src: nn.Module, dst: nn.Module) -> None:
    """Every tensor of ``dst``'s state from the same-named tensor of ``src``, cut to ``dst``'s shape
    (the leading channels along every dimension)."""
    have = src.state_dict()
    for name, t in dst.state_dict().items():
        if name not in have:
            raise KeyError(f"{type(src).__name__} has no {name!r} for {type(dst).__name__}")
        t.copy_(have[name][tuple(slice(0, n) for n in t.shape)])


def inherit_child(net: MaskedSupernet, space: SpaceV2, arch: ArchV2) -> FBNetV2Net:
    """``arch``'s :class:`fbnet.blocks.FBNetV2Net` with its weights sliced from ``net`` (the child the
    one-hot weights of ``arch`` select; at the largest resolution it computes what ``net`` computes
    with :func:`one_hot_weights` of ``arch``)."""
    child = FBNetV2Net(space, arch)
    copy_sliced(net.stem, child.stem)
    for i, (layer, choice) in enumerate(zip(net.layers, arch.layers, strict=True)):
        block = layer.blocks[space.blocks.index(choice.block)]
        if choice.block != "skip":
            copy_sliced(block, child.layers[i])
        elif any(True for _ in child.layers[i].parameters()):
            copy_sliced(block.proj, child.layers[i])
    copy_sliced(net.head, child.head)
    copy_sliced(net.fc, child.fc)
    return child.train(net.training)


__all__ = ["LayerMasks", "MaskedHead", "MaskedIR", "MaskedLayer", "MaskedSkip", "MaskedSupernet", "MaxShape",
           "MixWeights", "V2ArchParams", "copy_sliced", "inherit_child", "one_hot_weights"]
