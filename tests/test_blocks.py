"""The block registry: every candidate exports to ExecuTorch and Core ML and matches eager PyTorch."""

import pytest
import torch

from fbnet.blocks import PRIMITIVES, ChannelShuffle, FBNet, IRFBlock, build_op, example_input
from fbnet.export import export_mlpackage, export_pte
from fbnet.space import CANDIDATE_NAMES, Arch, get_space

SPACE = get_space("fbnet-cifar")
LAYER = 5  # 24x32x32 -> 32, stride 2: every candidate, skip included, is a real operator here


def test_registry_has_one_uniform_constructor_per_block():
    assert set(CANDIDATE_NAMES) | {"stem", "head", "pool", "fc"} == set(PRIMITIVES)
    for name in CANDIDATE_NAMES:
        m = PRIMITIVES[name](24, 32, 2)
        y = m(torch.randn(2, 24, 32, 32))
        assert y.shape == (2, 32, 16, 16), name


def test_block_structure_follows_fbnet():
    g2 = build_op(SPACE.layer_op(2, "k5_e1_g2"))  # 24 -> 24, s1: residual, shuffle after first 1x1
    assert isinstance(g2, IRFBlock) and g2.residual
    convs = [m for m in g2.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size, c.groups, c.stride) for c in convs] == [((1, 1), 2, (1, 1)), ((5, 5), 24, (1, 1)),
                                                                   ((1, 1), 2, (1, 1))]
    names = [type(m).__name__ for _, m in g2.named_children()]
    assert names.index("ChannelShuffle") == 1  # right after the first 1x1 (pw)
    assert type(g2.pwl[-1]).__name__ == "BatchNorm2d"  # no ReLU after the last 1x1
    e6 = build_op(SPACE.layer_op(LAYER, "k3_e6"))
    assert not e6.residual and [c.out_channels for c in e6.modules() if isinstance(c, torch.nn.Conv2d)] == [144, 144, 32]
    e1 = build_op(SPACE.layer_op(LAYER, "k3_e1"))  # paper form: the first 1x1 is there at e = 1
    assert sum(isinstance(c, torch.nn.Conv2d) for c in e1.modules()) == 3
    assert isinstance(build_op(SPACE.layer_op(2, "skip")), torch.nn.Identity)
    assert sum(isinstance(c, torch.nn.Conv2d) for c in build_op(SPACE.layer_op(LAYER, "skip")).modules()) == 1


def test_channel_shuffle_is_the_fbnet_permutation():
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert ChannelShuffle(8, 2)(x).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


@pytest.mark.parametrize("name", CANDIDATE_NAMES)
def test_block_exports_runs_on_executorch_and_converts_to_coreml(name, tmp_path):
    from executorch.runtime import Runtime

    op = SPACE.layer_op(LAYER, name)
    torch.manual_seed(0)
    m = build_op(op).eval()
    # non-trivial BN statistics so folding is exercised
    for bn in (b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    x = example_input(op.input_shape)
    pte = export_pte(m, x, tmp_path / f"{name}.pte")
    program = Runtime.get().load_program(pte)
    y = program.load_method("forward").execute((x,))[0]
    with torch.no_grad():
        ref = m(x)
    assert y.shape == ref.shape == (1, 32, 16, 16)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)

    pkg = export_mlpackage(m, x, tmp_path / f"{name}.mlpackage")
    assert (pkg / "Manifest.json").exists()
    import coremltools as ct

    spec = ct.utils.load_spec(str(pkg))
    assert spec.WhichOneof("Type") == "mlProgram"
    assert spec.description.input[0].type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT16
    assert spec.description.output[0].type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT16


@pytest.mark.parametrize("name", ["fbnet-cifar", "fbnet-224"])
def test_whole_architectures_build_through_the_registry(name):
    space = get_space(name)
    for arch in ("FBNet-A", "FBNet-B", "FBNet-C", ",".join(CANDIDATE_NAMES[i % 9] for i in range(22))):
        a = Arch.parse(arch)
        net = FBNet(space, a)
        assert sum(p.numel() for p in net.parameters()) == space.arch_params(a)
    if name == "fbnet-cifar":
        y = FBNet(space, Arch.parse("FBNet-B")).eval()(torch.randn(2, 3, 32, 32))
        assert y.shape == (2, 10)


def test_fixed_ops_export(tmp_path):
    from executorch.runtime import Runtime

    for op in SPACE.fixed_ops:
        m = build_op(op).eval()
        x = example_input(op.input_shape)
        program = Runtime.get().load_program(export_pte(m, x, tmp_path / f"{op.block}.pte"))
        torch.testing.assert_close(program.load_method("forward").execute((x,))[0], m(x), rtol=1e-4, atol=1e-4)


def test_registry_is_derived_from_the_declarations_and_names_the_irf_parts():
    from fbnet.space import PRIMITIVE_SPECS

    assert set(PRIMITIVES) == set(PRIMITIVE_SPECS)  # stem, head, pool, fc are primitives too
    block = PRIMITIVES["k5_e1_g2"](16, 24, 2)
    assert [n for n, _ in block.named_children()] == ["pw", "shuffle", "dw", "pwl"]
    assert block.dw[0].kernel_size == (5, 5) and block.dw[0].stride == (2, 2) and block.pw[0].groups == 2
    assert isinstance(PRIMITIVES["skip"](16, 16, 1), torch.nn.Identity)
    assert PRIMITIVES["pool"](8, 8, 1, hw=4)(torch.ones(1, 8, 4, 4)).shape == (1, 8)
