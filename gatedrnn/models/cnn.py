"""A small convolutional classifier for MNIST-like (1x28x28) and CIFAR-like (3x32x32) images.

Conv-pool stacks of gatedrnn's :class:`~gatedrnn.nn.Conv2d` and :class:`~gatedrnn.nn.MaxPool2d`,
a global :class:`~gatedrnn.nn.AdaptiveAvgPool2d` and a linear head (BatchNorm2d, ReLU, Dropout
and Linear are torch's).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

from torch import Tensor, nn

from ..nn.conv import Conv2d
from ..nn.pooling import AdaptiveAvgPool2d, MaxPool2d

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    """``len(widths)`` stages of [3x3 conv, BatchNorm, ReLU] x 2 followed by a 2x2 max pool, then
    a global average pool, dropout and a linear classifier.

    Each stage halves the resolution: 28 -> 14 -> 7 and 32 -> 16 -> 8 with the default two
    stages. The global pool makes the head independent of the image size, so one class serves
    both 28x28 and 32x32 inputs (and anything at least ``2 ** len(widths)`` pixels a side).

    Args:
        in_channels: 1 for grey-scale (MNIST), 3 for RGB (CIFAR).
        num_classes: size of the output.
        widths: output channels of each stage.
        dropout: drop probability before the classifier (0 disables it).
        backend: gatedrnn backend of every convolution and pooling layer (None: the usual choice).

    Shapes: (N, in_channels, H, W) -> logits (N, num_classes).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: Sequence[int] = (32, 64),
                 dropout: float = 0.25, *, backend: Optional[str] = None):
        super().__init__()
        if not widths:
            raise ValueError("widths must name at least one stage")
        self.backend = backend
        layers: List[nn.Module] = []
        channels = in_channels
        for width in widths:
            for _ in range(2):
                # No conv bias: the BatchNorm right after it has its own shift.
                layers += [Conv2d(channels, width, kernel_size=3, padding=1, bias=False, backend=backend),
                           nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                channels = width
            layers.append(MaxPool2d(kernel_size=2, backend=backend))
        self.features = nn.Sequential(*layers)
        self.pool = AdaptiveAvgPool2d((1, 1), backend=backend)
        self.classifier = nn.Sequential(nn.Flatten(1), nn.Dropout(dropout), nn.Linear(channels, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)))
