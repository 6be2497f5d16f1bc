"""Classic networks built from gatedrnn's layers."""
from .cnn import SmallCNN
from .resnet import BasicBlock, ResNet, resnet18, resnet34

__all__ = ["SmallCNN", "BasicBlock", "ResNet", "resnet18", "resnet34"]
