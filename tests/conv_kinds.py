"""One tiny model per kind of 2-D convolution, for the build tests of every target.

Each model is a stem conv (so the layout a build gives convs reaches the conv under test), the
conv of its kind, a ReLU and a 1x1 conv: the conv under test sits between two others, as in a
real network.
"""

from __future__ import annotations

import numpy as np
import torch

INPUT_SHAPE = (1, 3, 12, 12)

#: kind -> the conv under test (8 channels in)
CONV_KINDS = {
    "plain": lambda: torch.nn.Conv2d(8, 8, 3, padding=1),
    "strided": lambda: torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),
    "dilated": lambda: torch.nn.Conv2d(8, 8, 3, padding=2, dilation=2),
    "grouped": lambda: torch.nn.Conv2d(8, 8, 3, padding=1, groups=4),
    "grouped_1x1": lambda: torch.nn.Conv2d(8, 16, 1, groups=4),
    "depthwise": lambda: torch.nn.Conv2d(8, 8, 7, padding=3, groups=8),
    "pointwise": lambda: torch.nn.Conv2d(8, 16, 1),
    "transposed": lambda: torch.nn.ConvTranspose2d(8, 4, 2, stride=2),
    "transposed_padded": lambda: torch.nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1),
    "transposed_grouped": lambda: torch.nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1,
                                                           groups=2),
}


class ConvKindNet(torch.nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv = CONV_KINDS[kind]()
        self.head = torch.nn.Conv2d(self.conv.out_channels, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(torch.relu(self.stem(x)))))


def conv_kind_net(kind: str) -> torch.nn.Module:
    return ConvKindNet(kind).eval()


def conv_kind_input(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(INPUT_SHAPE).astype(np.float32)


class TinyUNet(torch.nn.Module):
    """Encoder / decoder: strided convs down, a transposed conv and a bilinear upsample up, skip
    connections concatenated."""

    input_shape = (1, 3, 16, 16)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.e1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.e2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.e3 = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.up = torch.nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.d1 = torch.nn.Conv2d(32, 16, 3, padding=1)
        self.d2 = torch.nn.Conv2d(24, 8, 3, padding=1)
        self.out = torch.nn.Conv2d(8, 2, 1)

    def forward(self, x):
        a = torch.relu(self.e1(x))
        b = torch.relu(self.e2(a))
        c = torch.relu(self.e3(b))
        u = torch.relu(self.d1(torch.cat([self.up(c), b], 1)))
        u = torch.nn.functional.interpolate(u, scale_factor=2, mode="bilinear", align_corners=False)
        return self.out(torch.relu(self.d2(torch.cat([u, a], 1))))


class ShuffleBlock(torch.nn.Module):
    """ShuffleNet's unit: grouped 1x1 conv, channel shuffle, grouped 3x3 conv."""

    input_shape = (1, 3, 16, 16)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.g1 = torch.nn.Conv2d(16, 16, 1, groups=4)
        self.g3 = torch.nn.Conv2d(16, 16, 3, padding=1, groups=4)

    def forward(self, x):
        x = torch.relu(self.g1(torch.relu(self.stem(x))))
        n, c, h, w = x.shape
        x = x.view(n, 4, c // 4, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.g3(x)


class ConvNeXtBlock(torch.nn.Module):
    """ConvNeXt's block: depthwise 7x7, LayerNorm over channels, MLP with GELU; a GroupNorm after."""

    input_shape = (1, 3, 32, 32)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 16, 4, stride=4)
        self.dw = torch.nn.Conv2d(16, 16, 7, padding=3, groups=16)
        self.ln = torch.nn.LayerNorm(16)
        self.fc1, self.fc2 = torch.nn.Linear(16, 32), torch.nn.Linear(32, 16)
        self.gn = torch.nn.GroupNorm(4, 16)

    def forward(self, x):
        x = self.stem(x)
        y = self.ln(self.dw(x).permute(0, 2, 3, 1))
        y = self.fc2(torch.nn.functional.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        return self.gn(x + y)


NETWORKS = {"unet": TinyUNet, "shuffle": ShuffleBlock, "convnext": ConvNeXtBlock}
