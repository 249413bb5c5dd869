"""Reference architectures written in the project (no torchvision, no downloaded weights).

Each entry knows its default input shape and class count. Weights are seeded at creation, so
the same name and seed always give the same model.

Example:
    >>> from edgeopt.pipeline.zoo import create, ZOO
    >>> sorted(ZOO)
    ['digits_cnn', 'fashion_cnn', 'mobilenetv2', 'resnet18', 'tiny_vit']
    >>> model = create("digits_cnn")
    >>> ZOO["digits_cnn"].input_shape
    (1, 1, 32, 32)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from edgeopt.core.errors import InputError


# -- digits_cnn ---------------------------------------------------------------------------

def _conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class DigitsCNN(nn.Module):
    """Small CNN for 1x32x32 digits: three conv-BN-ReLU-pool stages, then a 2-layer head."""

    def __init__(self, num_classes: int = 10, width: int = 16, img_size: int = 32):
        super().__init__()
        if img_size < 8:
            raise InputError(f"img_size must be >= 8 (three 2x2 poolings), got {img_size}")
        side = img_size // 8  # three 2x2 max-poolings, each rounding down
        w = width
        self.features = nn.Sequential(
            *_conv_bn_relu(1, w), nn.MaxPool2d(2),
            *_conv_bn_relu(w, 2 * w), nn.MaxPool2d(2),
            *_conv_bn_relu(2 * w, 4 * w), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(4 * w * side * side, 128), nn.ReLU(inplace=True),
            nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class FashionCNN(DigitsCNN):
    """The digits CNN at 1x28x28 for Fashion-MNIST (~0.1M parameters, ~4 MFLOPs).

    With ``TrainConfig(epochs=4, batch_size=128, shift=0)`` on the ``fashion_mnist`` task it
    reaches 91.38% test top-1 (seed 0) in four passes over 54,744 images (benchmarks/fashion.yaml).
    """

    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__(num_classes, width, img_size=28)


# -- resnet18 -----------------------------------------------------------------------------

class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016), torchvision's layout, 3x224x224 input."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# -- mobilenetv2 --------------------------------------------------------------------------

class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                   nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018), width 1.0, torchvision's layout, 3x224x224 input."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        features: list[nn.Module] = [nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(inplace=True))]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(nn.Sequential(nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280),
                                      nn.ReLU6(inplace=True)))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


# -- tiny_vit -----------------------------------------------------------------------------

class Attention(nn.Module):
    """Multi-head self-attention written with Linear and matmul, so that every projection is an
    ``nn.Linear`` (low-rank and pruning see it) and the export is plain MatMul/Softmax."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise InputError(f"attention dim {dim} must be divisible by heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim)), dim=-1)
        # heads * head_dim, not d: pruning whole heads narrows it (edgeopt.compress.prune).
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A small vision transformer encoder classifier (pre-norm, class token), 3x32x32 input."""

    def __init__(self, num_classes: int = 10, img_size: int = 32, patch: int = 4, in_chans: int = 3,
                 dim: int = 128, depth: int = 4, heads: int = 4, mlp: int = 256):
        super().__init__()
        if img_size % patch:
            raise InputError(f"img_size {img_size} must be divisible by patch {patch}")
        self.patch_embed = nn.Conv2d(in_chans, dim, patch, patch)
        n = (img_size // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def _kaiming_init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# -- registry -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ZooEntry:
    """A zoo architecture: how to build it and the input it expects (batch 1)."""

    name: str
    factory: Callable[..., nn.Module]
    input_shape: tuple
    num_classes: int
    description: str


ZOO = {e.name: e for e in (
    ZooEntry("digits_cnn", DigitsCNN, (1, 1, 32, 32), 10, "small CNN for the digits task"),
    ZooEntry("fashion_cnn", FashionCNN, (1, 1, 28, 28), 10, "small CNN for the fashion_mnist task"),
    ZooEntry("resnet18", ResNet18, (1, 3, 224, 224), 1000, "ResNet-18, ImageNet layout"),
    ZooEntry("mobilenetv2", MobileNetV2, (1, 3, 224, 224), 1000, "MobileNetV2 1.0, ImageNet layout"),
    ZooEntry("tiny_vit", TinyViT, (1, 3, 32, 32), 10, "4-layer transformer encoder classifier"),
)}


def create(name: str, seed: int = 0, **kwargs) -> nn.Module:
    """A freshly initialised zoo model in eval mode (seeded: same name and seed, same weights)."""
    if name not in ZOO:
        raise InputError(f"unknown zoo model {name!r}; expected one of {', '.join(sorted(ZOO))}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ZOO[name].factory(**kwargs)
    return model.eval()
