"""Shared candidate weights (``--weights shared``): each inverted-residual candidate is a slice of the
layer's largest weights and computes exactly :class:`fbnet.blocks.IRFBlock`'s function with them."""

from __future__ import annotations

import pytest
import torch

from fbnet.blocks import build_op
from fbnet.space import CANDIDATE_NAMES, get_space
from search.superkernels import SharedIRF, _grouped
from search.supernet import Supernet, proxy_space

SPACE = proxy_space(get_space("fbnet-cifar"), 0.25, 8)


@pytest.mark.parametrize("layer", [0, 1, 2, 5, 21])  # stride 1 / 2, residual or not, first and last
def test_each_shared_candidate_is_the_registry_block_with_sliced_weights(layer):
    torch.manual_seed(0)
    net = Supernet(SPACE, shared=True).eval()
    mixed, ls = net.layers[layer], SPACE.layers[layer]
    x = torch.randn(2, ls.cin, ls.h, ls.h)
    outs = {}
    for ci, name in enumerate(CANDIDATE_NAMES):
        cand = mixed.candidates[ci]
        if name == "skip":
            assert not isinstance(cand, SharedIRF)
            continue
        ref = build_op(SPACE.layer_op(layer, name)).eval()
        o = (5 - cand.kernel) // 2
        ref.pw[0].weight.data = _grouped(mixed.shared.pw, cand.mid, cand.cin, cand.groups).clone()
        ref.dw[0].weight.data = mixed.shared.dw[:cand.mid, :, o:o + cand.kernel, o:o + cand.kernel].clone()
        ref.pwl[0].weight.data = _grouped(mixed.shared.pwl, cand.cout, cand.mid, cand.groups).clone()
        for bn_ref, bn in ((ref.pw[1], cand.bn_pw), (ref.dw[1], cand.bn_dw), (ref.pwl[1], cand.bn_pwl)):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-1, 1)
            bn_ref.load_state_dict(bn.state_dict())
        outs[name] = cand(x)
        torch.testing.assert_close(outs[name], ref(x), atol=1e-5, rtol=1e-4)
    # tied, not copied: one parameter set per layer, and a change to it changes every candidate
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in Supernet(SPACE).parameters())
    with torch.no_grad():
        mixed.shared.pwl.mul_(2.0)
    changed = [n for n in outs if not torch.allclose(mixed.candidates[CANDIDATE_NAMES.index(n)](x), outs[n])]
    assert changed == list(outs)
