"""Classic networks built from gatedrnn's layers."""
from .cnn import SmallCNN
from .resnet import BasicBlock, ResNet, resnet18, resnet34
from .sequence import CharLanguageModel, SequenceClassifier, torch_char_language_model

__all__ = ["SmallCNN", "BasicBlock", "ResNet", "resnet18", "resnet34", "CharLanguageModel", "SequenceClassifier",
           "torch_char_language_model"]
