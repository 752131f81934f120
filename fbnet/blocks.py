"""The torch modules of the search space: one registry, one constructor signature.

Every op the agents time and every layer the supernet trains is built here, through
:data:`PRIMITIVES` and :func:`build_op`, so what was timed is what was trained. Shapes and groups
are plain Python integers fixed at construction; nothing reads sizes from tensors at run time
(ExecuTorch export and Core ML tracing both need that).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fbnet.arch_v2 import ArchV2
from fbnet.ops_v2 import OpV2, se_width
from fbnet.space import PRIMITIVE_SPECS, Arch, BlockSpec, Op, Space
from fbnet.space_v2 import SpaceV2


class ConvBNReLU(nn.Sequential):
    """k x k conv + BN (+ ReLU): the stem, the head, the projecting skip and the IRF's parts."""

    def __init__(self, cin: int, cout: int, stride: int = 1, kernel: int = 1, groups: int = 1, relu: bool = True):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=False))
        super().__init__(*layers)


class ChannelShuffle(nn.Module):
    """Shuffle channels across ``groups``: (N, g, C/g, H, W) -> swap 1 and 2 -> (N, C, H, W)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        assert channels % groups == 0, (channels, groups)
        self.groups = groups
        self.per_group = channels // groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(1, (self.groups, self.per_group)).transpose(1, 2).flatten(1, 2)


class IRFBlock(nn.Module):
    """Inverted residual block, paper form (the first 1x1 is present even at expansion 1):
    ``pw`` 1x1 group conv + BN + ReLU, ``shuffle`` (2 groups only), ``dw`` kxk depthwise with the
    stride + BN + ReLU, ``pwl`` 1x1 group conv + BN; residual when stride 1 and channels match."""

    def __init__(self, cin: int, cout: int, stride: int, *, kernel: int, expansion: int, groups: int = 1):
        super().__init__()
        mid = cin * expansion
        self.pw = ConvBNReLU(cin, mid, 1, kernel=1, groups=groups)
        self.shuffle = ChannelShuffle(mid, groups) if groups > 1 else None
        self.dw = ConvBNReLU(mid, mid, stride, kernel=kernel, groups=mid)
        self.pwl = ConvBNReLU(mid, cout, 1, kernel=1, groups=groups, relu=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw(x)
        if self.shuffle is not None:
            y = self.shuffle(y)
        y = self.pwl(self.dw(y))
        return x + y if self.residual else y


def skip(cin: int, cout: int, stride: int) -> nn.Module:
    """Identity where the shape is kept; otherwise a real 1x1 conv + BN + ReLU projection."""
    if cin == cout and stride == 1:
        return nn.Identity()
    return ConvBNReLU(cin, cout, stride, kernel=1)


class GlobalPool(nn.Module):
    """Average pool over the whole (known, fixed) map, flattened to (N, C)."""

    def __init__(self, size: int):
        super().__init__()
        self.pool = nn.AvgPool2d(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x).flatten(1)


# -- FBNetV2 primitives (fbnet.ops_v2): activations, hard-sigmoid squeeze-excite, the v2 inverted
# residual (no first 1x1 when mid == cin, as mobile-vision builds it) and the ir_pool head.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": lambda: nn.ReLU(inplace=False), "hswish": nn.Hardswish}


class ConvBNAct(nn.Sequential):
    """k x k conv (no bias) + BN + an activation of :data:`ACTIVATIONS` (None: none)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, kernel: int = 1, groups: int = 1,
                 act: str | None = "relu"):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act is not None:
            layers.append(ACTIVATIONS[act]())
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Global average pool over the (fixed) ``hw`` x ``hw`` map, 1x1 conv to ``mid`` + the block's
    activation, 1x1 conv back, hard sigmoid, channel-wise scale (mobile-vision ``se_hsig``)."""

    def __init__(self, channels: int, mid: int, hw: int, act: str):
        super().__init__()
        self.pool = nn.AvgPool2d(hw)
        self.reduce = nn.Conv2d(channels, mid, 1)
        self.act = ACTIVATIONS[act]()
        self.expand = nn.Conv2d(mid, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class IRFBlockV2(nn.Module):
    """FBNetV2 inverted residual: ``pw`` 1x1 + BN + act (absent when mid == cin), ``dw`` kxk
    depthwise with the stride + BN + act, ``se`` (optional), ``pwl`` 1x1 + BN; residual when stride 1
    and channels match. ``hw`` is the input's spatial size (the SE pool's window follows from it)."""

    def __init__(self, cin: int, cout: int, stride: int, *, mid: int, kernel: int, se: bool, act: str, hw: int):
        super().__init__()
        self.pw = ConvBNAct(cin, mid, act=act) if mid != cin else None
        self.dw = ConvBNAct(mid, mid, stride, kernel, groups=mid, act=act)
        self.se = SqueezeExcite(mid, se_width(mid), (hw - 1) // stride + 1, act) if se else None
        self.pwl = ConvBNAct(mid, cout, act=None)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(x if self.pw is None else self.pw(x))
        if self.se is not None:
            y = self.se(y)
        y = self.pwl(y)
        return x + y if self.residual else y


class IRPoolHead(nn.Module):
    """The ``ir_pool`` head: 1x1 to ``mid`` + BN + act, global average pool over the fixed ``hw``
    map, 1x1 to ``cout`` (no BN, no bias) + act, flattened to (N, cout) for the classifier."""

    def __init__(self, cin: int, cout: int, *, mid: int, hw: int, act: str):
        super().__init__()
        self.pw = ConvBNAct(cin, mid, act=act)
        self.pool = nn.AvgPool2d(hw)
        self.pwl = nn.Conv2d(mid, cout, 1, bias=False)
        self.act = ACTIVATIONS[act]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.pwl(self.pool(self.pw(x)))).flatten(1)


# A constructor per kind of primitive, all called as ``(cin, cout, stride, *, hw, **spec.kwargs())``
# (``hw`` is the input's spatial size, which only the pool needs).
CONSTRUCTORS: dict[str, Callable[..., nn.Module]] = {
    "ir": lambda cin, cout, stride, *, hw=None, **kw: IRFBlock(cin, cout, stride, **kw),
    "skip": lambda cin, cout, stride, *, hw=None: skip(cin, cout, stride),
    "conv": lambda cin, cout, stride, *, hw=None, kernel, groups=1: ConvBNReLU(cin, cout, stride, kernel, groups),
    "pool": lambda cin, cout, stride, *, hw: GlobalPool(hw),
    "fc": lambda cin, cout, stride, *, hw=None: nn.Linear(cin, cout),
    # FBNetV2 (fbnet.ops_v2.BlockSpecV2.constructor); ``mid`` is the op's inner width
    "ir2": lambda cin, cout, stride, *, hw, mid, kernel, se, act: IRFBlockV2(cin, cout, stride, mid=mid, kernel=kernel,
                                                                            se=se, act=act, hw=hw),
    "conv_act": lambda cin, cout, stride, *, hw=None, kernel, act: ConvBNAct(cin, cout, stride, kernel, act=act),
    "ir_pool": lambda cin, cout, stride, *, hw, mid, act: IRPoolHead(cin, cout, mid=mid, hw=hw, act=act),
}


def _primitive(spec: BlockSpec) -> Callable[..., nn.Module]:
    build, kw = CONSTRUCTORS[spec.constructor], spec.kwargs()
    return lambda cin, cout, stride, *, hw=None: build(cin, cout, stride, hw=hw, **kw)


# name -> constructor(cin, cout, stride, *, hw=None), derived from the space's declarations
# (fbnet.space.CANDIDATES and FIXED): adding a candidate is one BlockSpec line there.
PRIMITIVES: dict[str, Callable[..., nn.Module]] = {name: _primitive(spec) for name, spec in PRIMITIVE_SPECS.items()}


def build_op(op: Op | OpV2) -> nn.Module:
    """The module of one op of a space (searchable block or fixed op; v1 or v2)."""
    if isinstance(op, OpV2):
        return build_op_v2(op)
    return PRIMITIVES[op.block](op.cin, op.cout, op.stride, hw=op.h)


def build_op_v2(op: OpV2) -> nn.Module:
    """The module of a v2 op (``build_op(parse_key_v2(key))`` builds one from its key)."""
    spec = op.spec
    kw = spec.kwargs()
    if op.mid is not None:
        kw["mid"] = op.mid
    return CONSTRUCTORS[spec.constructor](op.cin, op.cout, op.stride, hw=op.h, **kw)


def init_weights(module: nn.Module) -> None:
    """maskrcnn-benchmark init: kaiming normal (fan_out) convs, unit BN, small fc."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class FBNet(nn.Module):
    """A whole architecture of a space: stem, 22 chosen blocks, head, pool, fc."""

    def __init__(self, space: Space, arch: Arch):
        super().__init__()
        self.space_name = space.name
        self.arch = arch
        self.stem = build_op(space.stem)
        self.layers = nn.Sequential(*(build_op(space.layer_op(i, b)) for i, b in enumerate(arch.blocks)))
        self.head = build_op(space.head)
        self.pool = build_op(space.pool)
        self.fc = build_op(space.fc)
        init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.head(self.layers(self.stem(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class FBNetV2Net(nn.Module):
    """A whole v2 architecture at its resolution: stem, the chosen layers (identity skips as
    ``nn.Identity``), the ir_pool head, the classifier; built from the ops the space prices."""

    def __init__(self, space: SpaceV2, arch: ArchV2):
        super().__init__()
        self.space_name = space.name
        self.arch = arch
        ops = space.arch_ops(arch, with_identity=True)
        self.stem = build_op(ops[0])
        self.layers = nn.Sequential(*(build_op(op) for op in ops[1:-2]))
        self.head = build_op(ops[-2])
        self.fc = build_op(ops[-1])
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.layers(self.stem(x))))


def example_input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """The one example input: deterministic N(0, 1) values of ``shape`` (``op.input_shape``,
    ``space.input_shape``), used for export, calibration and eager checks alike."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


__all__ = ["ACTIVATIONS", "CONSTRUCTORS", "PRIMITIVES", "FBNet", "FBNetV2Net", "IRFBlock", "IRFBlockV2", "IRPoolHead",
           "ChannelShuffle", "ConvBNAct", "ConvBNReLU", "GlobalPool", "SqueezeExcite", "build_op", "build_op_v2",
           "example_input", "init_weights"]
