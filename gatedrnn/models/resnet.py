"""ResNet-18 and ResNet-34 (He et al., 2016) built from gatedrnn's convolution and pooling.

The module tree, attribute names and therefore the ``state_dict`` keys are torchvision's
(``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1`` ... ``layer4`` of ``BasicBlock``s with an
optional ``downsample = Sequential(1x1 conv, BatchNorm2d)``, ``avgpool``, ``fc``), so a
torchvision ResNet state dict loads with ``strict=True`` and the other way round. Every
convolution and pooling layer is a :mod:`gatedrnn.nn` layer running on ``backend``;
BatchNorm2d, ReLU and Linear are torch's.

Shapes: input (N, 3, H, W) -> logits (N, num_classes). H and W of at least 32 keep every stage
non-empty (the network downsamples by 32); the adaptive average pool makes any larger size work.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..nn.conv import Conv2d
from ..nn.pooling import AdaptiveAvgPool2d, MaxPool2d

__all__ = ["BasicBlock", "ResNet", "resnet18", "resnet34"]


def _conv3x3(in_channels: int, out_channels: int, stride: int, backend: Optional[str]) -> Conv2d:
    # No bias: the BatchNorm that follows every convolution has its own shift.
    return Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False,
                  backend=backend)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection: relu(bn2(conv2(relu(bn1(conv1 x)))) + skip x).

    ``skip`` is the identity, or ``downsample`` (1x1 convolution + BatchNorm) when the block
    changes the resolution (``stride`` 2) or the channel count.

    Shapes: (N, in_channels, H, W) -> (N, channels, ceil(H / stride), ceil(W / stride)).
    """

    expansion = 1  # output channels per ``channels`` (4 in the Bottleneck of ResNet-50 and up)

    def __init__(self, in_channels: int, channels: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, *, backend: Optional[str] = None):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, channels, stride, backend)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(channels, channels, 1, backend)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + skip
        return self.relu(out)


class ResNet(nn.Module):
    """A ResNet of ``BasicBlock``s: a 7x7/2 stem and 3x3/2 max pool, four stages of
    ``blocks_per_stage[i]`` blocks with 64, 128, 256, 512 channels (each stage after the first
    halves the resolution), global average pool and a linear classifier.

    Initialisation as torchvision's: convolutions kaiming-normal (fan_out, relu), BatchNorm
    weight 1 and bias 0, the classifier torch.nn.Linear's default; ``zero_init_residual`` sets
    the last BatchNorm weight of each block to 0, so every block starts as the identity.

    Shapes: (N, 3, H, W) -> (N, num_classes).
    """

    def __init__(self, block: type = BasicBlock, blocks_per_stage: Sequence[int] = (2, 2, 2, 2),
                 num_classes: int = 1000, zero_init_residual: bool = False, *,
                 backend: Optional[str] = None):
        super().__init__()
        if len(blocks_per_stage) != 4:
            raise ValueError(f"blocks_per_stage must list 4 stages, got {list(blocks_per_stage)}")
        self.backend = backend
        self.inplanes = 64  # channels entering the next stage (torchvision's attribute name)
        self.conv1 = Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False, backend=backend)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = MaxPool2d(kernel_size=3, stride=2, padding=1, backend=backend)
        self.layer1 = self._make_stage(block, 64, blocks_per_stage[0], stride=1)
        self.layer2 = self._make_stage(block, 128, blocks_per_stage[1], stride=2)
        self.layer3 = self._make_stage(block, 256, blocks_per_stage[2], stride=2)
        self.layer4 = self._make_stage(block, 512, blocks_per_stage[3], stride=2)
        self.avgpool = AdaptiveAvgPool2d((1, 1), backend=backend)
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # our Conv2d subclasses torch's
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def _make_stage(self, block: type, channels: int, num_blocks: int, stride: int) -> nn.Sequential:
        out_channels = channels * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_channels:
            # The skip path must match the block's output resolution and channel count.
            downsample = nn.Sequential(
                Conv2d(self.inplanes, out_channels, kernel_size=1, stride=stride, bias=False,
                       backend=self.backend),
                nn.BatchNorm2d(out_channels),
            )
        blocks: List[nn.Module] = [block(self.inplanes, channels, stride, downsample, backend=self.backend)]
        self.inplanes = out_channels
        blocks += [block(self.inplanes, channels, backend=self.backend) for _ in range(1, num_blocks)]
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet18(num_classes: int = 1000, backend: Optional[str] = None, **kwargs) -> ResNet:
    """ResNet-18: BasicBlocks (2, 2, 2, 2), 11.7M parameters at 1000 classes."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, backend=backend, **kwargs)


def resnet34(num_classes: int = 1000, backend: Optional[str] = None, **kwargs) -> ResNet:
    """ResNet-34: BasicBlocks (3, 4, 6, 3), 21.8M parameters at 1000 classes."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, backend=backend, **kwargs)
