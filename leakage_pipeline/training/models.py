"""The classifiers, defined in torch: a small CNN for CPU runs and the demo, ResNet-18 for real runs.

ResNet-18 uses torchvision's module names, so a torchvision ``resnet18`` state dict saved to a
file loads as initial weights (nothing is downloaded here).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from leakage_pipeline.training.settings import ARCHITECTURES, RESNET18, SMALL_CNN


def _conv_bn(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True)]


class SmallCNN(nn.Sequential):
    """Four blocks of two 3x3 convolutions (16-32-64-128 channels, each halving the resolution), a linear head."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16):
        layers: list[nn.Module] = []
        channels = in_channels
        for block in range(4):
            out = width * 2**block
            layers += _conv_bn(channels, out) + _conv_bn(out, out) + [nn.MaxPool2d(2)]
            channels = out
        super().__init__(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                         nn.Linear(channels, num_classes))


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = (64, 128, 256, 512)
        channels = 64
        for number, width in enumerate(widths, start=1):
            stride = 1 if number == 1 else 2
            setattr(self, f"layer{number}", nn.Sequential(BasicBlock(channels, width, stride),
                                                          BasicBlock(width, width, 1)))
            channels = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_model(architecture: str, in_channels: int, num_classes: int) -> nn.Module:
    if architecture == SMALL_CNN:
        return SmallCNN(in_channels, num_classes)
    if architecture == RESNET18:
        return ResNet18(in_channels, num_classes)
    raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")


def load_initial_weights(model: nn.Module, path: Path) -> list[str]:
    """Load a state dict file into ``model`` where shapes allow; return the names left at their init.

    RGB first-layer weights are summed over colour for a grayscale model; the classifier head
    (a different number of classes) stays freshly initialised.
    """
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, dict) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    own = model.state_dict()
    usable, skipped = {}, []
    for name, tensor in own.items():
        source = loaded.get(name)
        if source is not None and source.dim() == 4 and source.shape[1] == 3 and tensor.shape[1] == 1:
            source = source.sum(dim=1, keepdim=True)
        if source is not None and source.shape == tensor.shape:
            usable[name] = source
        else:
            skipped.append(name)
    if not usable:
        raise ValueError(f"{path}: no weight matches the {type(model).__name__} architecture")
    model.load_state_dict(usable, strict=False)
    return skipped
