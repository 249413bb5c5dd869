"""The four Fashion-MNIST models of benchmarks/int8_accuracy.py, their data and their training.

Fashion-MNIST is read from its IDX files (``--data DIR``: the folder the Debian package
``dataset-fashion-mnist`` installs them in, or any folder holding the four ``*-ubyte.gz`` files). Splits are fixed and seeded: 12,000 training images,
1,000 validation images (the accuracy-aware flow's budget is measured there), 256 calibration
images (from the training set) and the first 2,000 test images (every reported accuracy).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

@dataclass(frozen=True)
class Split:
    x: np.ndarray
    y: np.ndarray

    def __len__(self):
        return len(self.y)


@dataclass(frozen=True)
class Data:
    train: Split
    val: Split
    calib: Split
    test: Split


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_data(folder: Path, n_train: int = 12000, seed: int = 0) -> Data:
    x = _idx(folder / "train-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    y = _idx(folder / "train-labels-idx1-ubyte.gz").astype(np.int64)
    xt = _idx(folder / "t10k-images-idx3-ubyte.gz").astype(np.float32)[:2000] / 255.0
    yt = _idx(folder / "t10k-labels-idx1-ubyte.gz").astype(np.int64)[:2000]
    mean, std = 0.2860, 0.3530  # Fashion-MNIST training-set statistics
    order = np.random.default_rng(seed).permutation(len(y))
    tr, va, ca = order[:n_train], order[n_train:n_train + 1000], order[n_train + 1000:n_train + 1256]

    def split(a, b):
        return Split(np.ascontiguousarray(((a - mean) / std)[:, None]).astype(np.float32), b)

    return Data(split(x[tr], y[tr]), split(x[va], y[va]), split(x[ca], y[ca]), split(xt, yt))


def _cbn(cin, cout, k=3, s=1, groups=1, act=nn.ReLU):
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         act() if act else nn.Identity())


class HardswishConcatNet(nn.Module):
    """Hardswish stem, two Inception-style blocks joined by concat, a residual add."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = _cbn(1, 16, 3, 1, act=nn.Hardswish)
        self.a1, self.a2 = _cbn(16, 16, 1), _cbn(16, 16, 3)
        self.pool = nn.MaxPool2d(2)
        self.b1, self.b2 = _cbn(32, 24, 1, 2), _cbn(32, 24, 3, 2)
        self.res = nn.Sequential(_cbn(48, 48, 3), _cbn(48, 48, 3, act=None))
        self.head = nn.Linear(48, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.pool(torch.cat([self.a1(x), self.a2(x)], 1))
        x = torch.cat([self.b1(x), self.b2(x)], 1)
        x = torch.relu(x + self.res(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class InvRes(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(_cbn(cin, hid, 1, act=nn.ReLU6), _cbn(hid, hid, 3, stride, hid, act=nn.ReLU6),
                                  _cbn(hid, cout, 1, act=None))

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetTiny(nn.Module):
    """MobileNetV2-style: ReLU6, depthwise convolutions, inverted residuals."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            _cbn(1, 16, 3, 2, act=nn.ReLU6), InvRes(16, 16, 1, 1), InvRes(16, 24, 2, 4),
            InvRes(24, 24, 1, 4), InvRes(24, 32, 1, 4), InvRes(32, 32, 1, 4), _cbn(32, 128, 1, act=nn.ReLU6))
        self.head = nn.Linear(128, num_classes)

    def forward(self, x):
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


class ResNetTiny(nn.Module):
    """Plain ResNet: BasicBlocks (conv-BN-ReLU, residual add)."""

    def __init__(self, num_classes=10):
        super().__init__()
        from edgeopt.pipeline.zoo import BasicBlock

        self.stem = _cbn(1, 16, 3)
        self.layers = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 32, 2), BasicBlock(32, 64, 2))
        self.head = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def vit():
    from edgeopt.pipeline.zoo import TinyViT

    return TinyViT(num_classes=10, img_size=28, patch=4, in_chans=1, dim=64, depth=2, heads=4, mlp=128)


MODELS = {"hswish_concat": HardswishConcatNet, "mobilenet_dw": MobileNetTiny, "vit_encoder": vit,
          "resnet": ResNetTiny}


def trained(name: str, data: Data, cache: Path, epochs: int = 4, seed: int = 0) -> nn.Module:
    """The model ``name`` trained on ``data.train`` (cached by name, epochs and seed)."""
    torch.manual_seed(seed)
    model = MODELS[name]()
    path = cache / f"{name}-e{epochs}-s{seed}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    from edgeopt.compress.augment import random_shift

    gen = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
    bs = 128
    steps = epochs * ((len(y) + bs - 1) // bs)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for s in range(0, len(y), bs):
            i = order[s:s + bs]
            loss = nn.functional.cross_entropy(model(random_shift(x[i], 1, gen)), y[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model
