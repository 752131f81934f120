"""Weight-shared candidates of one searchable layer (a "superkernel", as Single-Path NAS and OFA do).
Experimental (``--weights shared``, off by default).

Why it exists: with 9 independently initialised candidates per layer, a single-path supernet whose
path changes every step does not learn in a short search (bench/README.md, "Search quality"): every
layer that changes the channels or the stride has no residual, so each candidate maps into its own
random basis. Here the 8 inverted-residual candidates of a layer are slices of ONE set of weights:
the 1x1 expansion, the depthwise and the 1x1 projection of the largest candidate (expansion 6,
kernel 5). Candidate (k, e, g) uses the first ``e * cin`` expansion channels, the centre k x k of the
depthwise kernel, and for ``g = 2`` the two diagonal blocks of the 1x1 weights (then the channel
shuffle). Each candidate keeps its own BatchNorms. The skip candidate is the ordinary module
(identity, or its own 1x1 projection). With the same weights each candidate computes exactly
:class:`fbnet.blocks.IRFBlock`'s function (tests/test_search_superkernels.py); the child is always built
and trained from scratch with :class:`fbnet.blocks.FBNet`.

Measured (bench/README.md, "Search quality"): tying alone does not make the sampled paths learn in a
short search (0.13 at 50 steps); with the largest path trained alongside (``--anchor``) a 10-epoch
search's w_acc ends at 0.22-0.30 instead of 0.12, at 4.5x the CPU time. A building block for what
should come next (in-place distillation from the largest path, progressive shrinking), not a fix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fbnet.blocks import build_op
from fbnet.ops import BY_NAME
from fbnet.space import CANDIDATE_NAMES, Space

MAX_KERNEL = max(s.kernel for s in BY_NAME.values() if s.kernel)
MAX_EXPANSION = max(s.expansion for s in BY_NAME.values() if s.expansion)


class SharedWeights(nn.Module):
    """The largest candidate's three conv weights, which every IR candidate of the layer slices."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cin * MAX_EXPANSION
        self.pw = nn.Parameter(torch.empty(mid, cin, 1, 1))
        self.dw = nn.Parameter(torch.empty(mid, 1, MAX_KERNEL, MAX_KERNEL))
        self.pwl = nn.Parameter(torch.empty(cout, mid, 1, 1))
        for w in (self.pw, self.dw, self.pwl):  # kaiming normal, fan_out, as fbnet.blocks.init_weights
            nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")


def _grouped(w: torch.Tensor, rows: int, cols: int, groups: int) -> torch.Tensor:
    """The [rows, cols / groups] weight of a grouped 1x1 conv: the diagonal blocks of w[:rows, :cols]."""
    if groups == 1:
        return w[:rows, :cols]
    r, c = rows // groups, cols // groups
    return torch.cat([w[g * r:(g + 1) * r, g * c:(g + 1) * c] for g in range(groups)])


def _bn(c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return bn


class SharedIRF(nn.Module):
    """One IR candidate (kernel, expansion, groups) computed from the layer's :class:`SharedWeights`:
    pw 1x1 (grouped) + BN + ReLU, shuffle (2 groups), dw k x k with the stride + BN + ReLU, pwl 1x1
    (grouped) + BN, residual when the shape is kept -- :class:`fbnet.blocks.IRFBlock`'s function."""

    def __init__(self, shared: SharedWeights, cin: int, cout: int, stride: int, *, kernel: int, expansion: int,
                 groups: int = 1):
        super().__init__()
        object.__setattr__(self, "_shared", shared)  # a reference, not a submodule: registered once, on the layer
        self.cin, self.cout, self.stride, self.kernel, self.groups = cin, cout, stride, kernel, groups
        self.mid = cin * expansion
        self.bn_pw, self.bn_dw, self.bn_pwl = _bn(self.mid), _bn(self.mid), _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, g, mid = self._shared, self.groups, self.mid
        y = F.relu(self.bn_pw(F.conv2d(x, _grouped(s.pw, mid, self.cin, g), groups=g)))
        if g > 1:
            y = y.unflatten(1, (g, mid // g)).transpose(1, 2).flatten(1, 2)
        o = (MAX_KERNEL - self.kernel) // 2
        dw = s.dw[:mid, :, o:o + self.kernel, o:o + self.kernel]
        y = F.relu(self.bn_dw(F.conv2d(y, dw, stride=self.stride, padding=self.kernel // 2, groups=mid)))
        y = self.bn_pwl(F.conv2d(y, _grouped(s.pwl, self.cout, mid, g), groups=g))
        return x + y if self.residual else y


def shared_candidates(space: Space, layer: int) -> tuple[SharedWeights, nn.ModuleList]:
    """The layer's shared weights and its 9 candidates (in CANDIDATE_NAMES order)."""
    ls = space.layers[layer]
    shared = SharedWeights(ls.cin, ls.cout)
    cands = []
    for name in CANDIDATE_NAMES:
        spec = BY_NAME[name]
        if spec.constructor == "ir":
            cands.append(SharedIRF(shared, ls.cin, ls.cout, ls.stride, **spec.kwargs()))
        else:
            cands.append(build_op(space.layer_op(layer, name)))
    return shared, nn.ModuleList(cands)


__all__ = ["SharedIRF", "SharedWeights", "shared_candidates"]
