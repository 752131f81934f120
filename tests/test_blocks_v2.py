"""FBNetV2 modules through the block registry: the torch models of the released architectures have
the counts the space computes (torch's parameter count, a forward-hook FLOP counter), and v2 ops
export to ExecuTorch programs the way the agents export v1 ops."""

import random

import pytest
import torch
from torch import nn

from fbnet.arch_v2 import REFERENCES
from fbnet.blocks import FBNetV2Net, IRFBlockV2, build_op, example_input
from fbnet.ops_v2 import parse_key_v2
from fbnet.space_v2 import get_v2_space


def hook_counts(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds the way mobile-vision's counter sees them: conv and linear weights times output
    positions, plus the input elements of every average pool."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += m.weight.numel() * out.shape[2] * out.shape[3]
        elif isinstance(m, nn.Linear):
            total += m.weight.numel()
        elif isinstance(m, nn.AvgPool2d):
            total += inp[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total


def weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))


@pytest.mark.parametrize("name", list(REFERENCES))
def test_reference_models_count_as_the_space_does(name):
    sp, arch = get_v2_space("fbnetv2-224"), REFERENCES[name]
    net = FBNetV2Net(sp, arch).eval()
    ops = sp.arch_ops(arch)
    assert weights(net) == sum(op.params for op in ops)
    assert sum(p.numel() for p in net.parameters()) == sum(op.torch_params for op in ops)
    assert hook_counts(net, torch.zeros(sp.input_shape(arch.resolution))) == sum(op.macs for op in ops)


def test_random_cifar_architectures_count_and_run():
    sp = get_v2_space("fbnetv2-cifar")
    rng = random.Random(0)
    for _ in range(3):
        arch = sp.random_arch(rng)
        net = FBNetV2Net(sp, arch).eval()
        ops = sp.arch_ops(arch)
        x = torch.randn(2, 3, arch.resolution, arch.resolution)
        assert net(x).shape == (2, 10)
        assert hook_counts(net, x[:1]) == sum(op.macs for op in ops)
        assert sum(p.numel() for p in net.parameters()) == sum(op.torch_params for op in ops)


def test_v2_ops_build_from_their_keys():
    m = build_op(parse_key_v2("ir_k3-16x8x8-m16-24-s2"))
    assert isinstance(m, IRFBlockV2) and m.pw is None and m.se is None and not m.residual
    m = build_op(parse_key_v2("ir_k5_sehsig_hs-24x8x8-m72-24-s1"))
    assert m.pw is not None and m.residual and isinstance(m.dw[2], nn.Hardswish)
    # int(72 / 4) = 18 rounds to 16, below 95 % of 18, so one step more: 24 (mobile-vision rounding)
    assert (m.se.reduce.out_channels, m.se.expand.out_channels) == (24, 72)
    assert isinstance(build_op(parse_key_v2("skip-8x8x8-8-s1")), nn.Identity)
    head = build_op(parse_key_v2("ir_pool_hs-112x4x4-m672-800-s1")).eval()
    assert head(torch.randn(1, 112, 4, 4)).shape == (1, 800)


def test_v2_ops_export_and_run_on_executorch(tmp_path):
    """Two v2 ops (SE + h-swish inverted residual with its residual; the ir_pool head) through the agents'
    exporter (fbnet.export.op_module -> the registry) to .pte, executed by the ExecuTorch runtime."""
    from executorch.runtime import Runtime

    from device_agents import exporters
    from fbnet.export import op_module

    keys = ["ir_k5_sehsig_hs-32x8x8-m96-32-s1", "ir_pool_hs-112x4x4-m672-800-s1"]
    for key in keys:
        op = parse_key_v2(key)
        path = exporters.export_op(op, "pte", tmp_path)
        assert path.name == f"{key}.pte" and path.parent.name == f"pte-{exporters.fingerprint('pte')}"
        x = example_input(op.input_shape)
        y = Runtime.get().load_program(path).load_method("forward").execute((x,))[0]
        with torch.no_grad():
            ref = op_module(op)(x)
        assert y.shape == ref.shape
        torch.testing.assert_close(y, ref, rtol=1e-3, atol=1e-4)


def _perturb_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so that a wrong fold changes the output."""
    gen = torch.Generator().manual_seed(1)
    for bn in (b for b in model.modules() if isinstance(b, nn.BatchNorm2d)):
        bn.running_mean.copy_(torch.rand(bn.num_features, generator=gen) - 0.5)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) * 1.5 + 0.5)
        bn.weight.data.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
        bn.bias.data.copy_(torch.rand(bn.num_features, generator=gen) - 0.5)
    return model.eval()


def test_export_folds_batchnorm_into_the_convolutions_without_changing_the_function(tmp_path):
    """The export folds every BN (a cold export walks half the graph; bench/export_cost.py): the folded
    copy computes what the model does, keeps no BN, leaves the model itself alone, and is what
    ``export_pte`` writes -- exporting the folded copy gives the same bytes, exporting unfolded does not."""
    from fbnet.export import export_pte, fold_batchnorm

    sp = get_v2_space("fbnetv2-cifar")
    net = _perturb_bn(FBNetV2Net(sp, sp.random_arch(random.Random(3))))
    op = _perturb_bn(build_op(parse_key_v2("ir_k5_sehsig_hs-24x8x8-m72-24-s1")))
    for model, x in ((net, torch.randn(2, 3, 32, 32)), (op, torch.randn(1, 24, 8, 8))):
        n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        folded = fold_batchnorm(model)
        assert n_bn > 0 and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_bn
        with torch.no_grad():
            torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    x = example_input((1, 24, 8, 8))
    exported = export_pte(op, x, tmp_path / "op.pte").read_bytes()
    assert export_pte(fold_batchnorm(op), x, tmp_path / "folded.pte").read_bytes() == exported
    assert export_pte(op, x, tmp_path / "unfolded.pte", fold_bn=False).read_bytes() != exported
