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

from fbnet.space import BY_NAME, Arch, Op, Space


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int, relu: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=False))
    return layers


class ChannelShuffle(nn.Module):
    """Shuffle channels across ``groups``: (N, g, C/g, H, W) -> swap 1 and 2 -> (N, C, H, W)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        assert channels % groups == 0, (channels, groups)
        self.groups = groups
        self.per_group = channels // groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(1, (self.groups, self.per_group)).transpose(1, 2).flatten(1, 2)


class ConvBNReLU(nn.Sequential):
    """k x k conv + BN + ReLU: the stem, the head and the projecting skip."""

    def __init__(self, cin: int, cout: int, stride: int = 1, kernel: int = 1):
        super().__init__(*_conv_bn(cin, cout, kernel, stride, 1, relu=True))


class IRFBlock(nn.Module):
    """Inverted residual block, paper form: the first 1x1 is present even at expansion 1."""

    def __init__(self, cin: int, cout: int, stride: int, *, kernel: int, expansion: int, groups: int = 1):
        super().__init__()
        mid = cin * expansion
        layers = _conv_bn(cin, mid, 1, 1, groups, relu=True)
        if groups > 1:
            layers.append(ChannelShuffle(mid, groups))
        layers += _conv_bn(mid, mid, kernel, stride, mid, relu=True)
        layers += _conv_bn(mid, cout, 1, 1, groups, relu=False)
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


def _skip(cin: int, cout: int, stride: int) -> nn.Module:
    """Identity where the shape is kept; otherwise a real 1x1 conv + BN + ReLU projection."""
    if cin == cout and stride == 1:
        return nn.Identity()
    return ConvBNReLU(cin, cout, stride, kernel=1)


def _irf(name: str) -> Callable[[int, int, int], nn.Module]:
    spec = BY_NAME[name]
    return lambda cin, cout, stride: IRFBlock(
        cin, cout, stride, kernel=spec.kernel, expansion=spec.expansion, groups=spec.groups
    )


class GlobalPool(nn.Module):
    """Average pool over the whole (known, fixed) map, flattened to (N, C)."""

    def __init__(self, size: int):
        super().__init__()
        self.pool = nn.AvgPool2d(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x).flatten(1)


# name -> constructor(cin, cout, stride). Adding a candidate block is one line here plus its
# BlockSpec in fbnet.space.
PRIMITIVES: dict[str, Callable[[int, int, int], nn.Module]] = {
    **{name: _irf(name) for name in BY_NAME if name != "skip"},
    "skip": _skip,
    "stem": lambda cin, cout, stride: ConvBNReLU(cin, cout, stride, kernel=3),
    "head": lambda cin, cout, stride: ConvBNReLU(cin, cout, stride, kernel=1),
}


def build_op(op: Op) -> nn.Module:
    """The module of one op of a space (searchable block or fixed op)."""
    if op.block == "pool":
        return GlobalPool(op.h)
    if op.block == "fc":
        return nn.Linear(op.cin, op.cout)
    return PRIMITIVES[op.block](op.cin, op.cout, op.stride)


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


def example_input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """The one example input: deterministic N(0, 1) values of ``shape`` (``op.input_shape``,
    ``space.input_shape``), used for export, calibration and eager checks alike."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


__all__ = ["PRIMITIVES", "FBNet", "IRFBlock", "ChannelShuffle", "ConvBNReLU", "GlobalPool", "build_op",
           "example_input", "init_weights"]
