"""Architectures that structured pruning and low-rank must handle without breaking the model.

Shared by the unit tests (tiny widths, small inputs) and by ``benchmarks/prune_suite.py``
(``scale`` widens the hand-written models). Every entry is ``(name, factory, input_shape)``;
factories are seeded, so the same entry always gives the same weights.

Example:
    >>> from arch_suite import SUITE, build
    >>> model, x = build("se_residual")
    >>> tuple(model(x).shape)
    (1, 10)
"""

from __future__ import annotations

import torch
from torch import nn

from edgeopt.pipeline.zoo import create


def _cbr(cin: int, cout: int, k: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class ConcatResidual(nn.Module):
    """Two branches joined by ``torch.cat``, then a residual add with the stem."""

    def __init__(self, w: int = 8, classes: int = 10):
        super().__init__()
        self.stem = _cbr(3, 2 * w)
        self.left = _cbr(2 * w, w)
        self.right = _cbr(2 * w, w, k=1)
        self.mix = _cbr(2 * w, 2 * w)
        self.head = nn.Linear(2 * w, classes)

    def forward(self, x):
        s = self.stem(x)
        y = torch.cat([self.left(s), self.right(s)], dim=1)
        y = self.mix(y) + s
        return self.head(y.mean(dim=(2, 3)))


class SEResidual(nn.Module):
    """Squeeze-excitation gate (pool -> Linear -> ReLU -> Linear -> Sigmoid -> mul) + residual."""

    def __init__(self, w: int = 16, classes: int = 10):
        super().__init__()
        self.stem = _cbr(3, w)
        self.body = nn.Sequential(_cbr(w, w), nn.Conv2d(w, w, 3, padding=1))
        self.fc1, self.fc2 = nn.Linear(w, w // 4), nn.Linear(w // 4, w)
        self.head = nn.Linear(w, classes)

    def forward(self, x):
        s = self.stem(x)
        y = self.body(s)
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(y.mean(dim=(2, 3))))))
        y = y * gate[:, :, None, None] + s
        return self.head(torch.relu(y).mean(dim=(2, 3)))


class UNetLike(nn.Module):
    """Encoder-decoder with a skip concatenation; a dense (per-pixel) output."""

    def __init__(self, w: int = 8, classes: int = 3):
        super().__init__()
        self.enc1, self.enc2 = _cbr(3, w), _cbr(w, 2 * w)
        self.up = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec = _cbr(2 * w, w)
        self.out = nn.Conv2d(w, classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
        return self.out(self.dec(torch.cat([self.up(e2), e1], dim=1)))


class TCN(nn.Module):
    """Temporal conv net: dilated Conv1d blocks with residual adds, (N, C, T) input."""

    def __init__(self, w: int = 16, classes: int = 5, cin: int = 4):
        super().__init__()
        self.inp = nn.Conv1d(cin, w, 1)
        self.blocks = nn.ModuleList(nn.Sequential(
            nn.Conv1d(w, w, 3, padding=d, dilation=d), nn.BatchNorm1d(w), nn.ReLU(),
            nn.Conv1d(w, w, 3, padding=d, dilation=d)) for d in (1, 2))
        self.head = nn.Linear(w, classes)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = torch.relu(x + b(x))
        return self.head(x.mean(dim=2))


class MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int, tok_hidden: int, ch_hidden: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, tok_hidden), nn.GELU(), nn.Linear(tok_hidden, tokens))
        self.channel_mlp = nn.Sequential(nn.Linear(dim, ch_hidden), nn.GELU(), nn.Linear(ch_hidden, dim))

    def forward(self, x):  # (N, tokens, dim)
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class MLPMixer(nn.Module):
    """MLP-Mixer: token mixing Linear over the transposed (token) axis."""

    def __init__(self, dim: int = 16, img: int = 16, patch: int = 4, classes: int = 10):
        super().__init__()
        tokens = (img // patch) ** 2
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.blocks = nn.Sequential(*[MixerBlock(tokens, dim, 2 * tokens, 4 * dim) for _ in range(2)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(x)).mean(dim=1))


class ViTEncoder(nn.Module):
    """ViT-style encoder on ``nn.MultiheadAttention`` (heads are whole units), mean-pooled."""

    def __init__(self, dim: int = 32, heads: int = 4, depth: int = 2, img: int = 16, patch: int = 4,
                 classes: int = 10):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, (img // patch) ** 2, dim) * 0.02)
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.append(nn.ModuleDict({
                "norm1": nn.LayerNorm(dim), "attn": nn.MultiheadAttention(dim, heads, batch_first=True),
                "norm2": nn.LayerNorm(dim),
                "mlp": nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))}))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        for layer in self.layers:
            h = layer["norm1"](x)
            x = x + layer["attn"](h, h, h, need_weights=False)[0]
            x = x + layer["mlp"](layer["norm2"](x))
        return self.head(self.norm(x).mean(dim=1))


class ChunkNet(nn.Module):
    """A gated unit: one conv's output split in two with ``chunk`` (value * sigmoid(gate))."""

    def __init__(self, w: int = 8, classes: int = 10):
        super().__init__()
        self.stem = _cbr(3, w)
        self.conv = nn.Conv2d(w, 2 * w, 3, padding=1)
        self.proj = _cbr(w, 2 * w)
        self.head = nn.Linear(2 * w, classes)

    def forward(self, x):
        a, b = self.conv(self.stem(x)).chunk(2, dim=1)
        y = self.proj(a * torch.sigmoid(b))
        return self.head(y.mean(dim=(2, 3)))


class GroupedConvNet(nn.Module):
    """ResNeXt-like: grouped 3x3 convolutions between 1x1 ones, with a residual add."""

    def __init__(self, w: int = 16, groups: int = 4, classes: int = 10):
        super().__init__()
        self.stem = _cbr(3, w)
        self.block = nn.Sequential(_cbr(w, w, 1), _cbr(w, w, 3, groups=groups),
                                   nn.Conv2d(w, w, 1, bias=False), nn.BatchNorm2d(w))
        self.head = nn.Linear(w, classes)

    def forward(self, x):
        s = self.stem(x)
        return self.head(torch.relu(self.block(s) + s).mean(dim=(2, 3)))


def _scaled(cls, **kw):
    return lambda scale=1: cls(**{k: v * scale for k, v in kw.items()})


# name -> (factory(scale), input shape). Zoo models at small inputs; scale widens the others.
SUITE = {
    "digits_cnn": (lambda scale=1: create("digits_cnn"), (1, 1, 32, 32)),
    "resnet18": (lambda scale=1: create("resnet18", num_classes=10), (1, 3, 32, 32)),
    "mobilenetv2": (lambda scale=1: create("mobilenetv2", num_classes=10), (1, 3, 32, 32)),
    "tiny_vit": (lambda scale=1: create("tiny_vit", dim=32 * scale, heads=4, mlp=64 * scale, depth=2),
                 (1, 3, 32, 32)),
    "concat_residual": (_scaled(ConcatResidual, w=8), (1, 3, 16, 16)),
    "se_residual": (_scaled(SEResidual, w=16), (1, 3, 16, 16)),
    "unet_like": (_scaled(UNetLike, w=8), (1, 3, 16, 16)),
    "tcn_conv1d": (_scaled(TCN, w=16), (1, 4, 32)),
    "mlp_mixer": (_scaled(MLPMixer, dim=16), (1, 3, 16, 16)),
    "vit_encoder": (_scaled(ViTEncoder, dim=32), (1, 3, 16, 16)),
    "chunk_gate": (_scaled(ChunkNet, w=8), (1, 3, 16, 16)),
    "grouped_conv": (_scaled(GroupedConvNet, w=16), (1, 3, 16, 16)),
}


def build(name: str, scale: int = 1, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """The suite model ``name`` (eval mode, seeded) and a seeded example input."""
    factory, shape = SUITE[name]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = factory(scale).eval()
        x = torch.randn(*shape)
    return model, x

