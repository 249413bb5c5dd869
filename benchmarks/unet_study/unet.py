"""A U-Net-like denoiser judged by mse: the regression study of benchmarks/unet_study/unet.yaml.

``make`` is the model factory (strided convs down; a ConvTranspose2d and a bilinear Upsample up;
skip connections concatenated), ``write_task(path)`` writes the task's ``.npz``: noisy images in,
the clean images out (``x``, ``y``; float targets make it an mse task).

Example:
    >>> import numpy as np
    >>> from unet import make, task_arrays
    >>> x, y = task_arrays(8)
    >>> tuple(make()(__import__("torch").from_numpy(x[:1])).shape) == y[:1].shape
    True
"""

from __future__ import annotations

import sys

import numpy as np
import torch


class UNet(torch.nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.e1 = torch.nn.Sequential(torch.nn.Conv2d(1, w, 3, padding=1), torch.nn.ReLU())
        self.e2 = torch.nn.Sequential(torch.nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), torch.nn.ReLU())
        self.e3 = torch.nn.Sequential(torch.nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), torch.nn.ReLU())
        self.up = torch.nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.d1 = torch.nn.Sequential(torch.nn.Conv2d(4 * w, 2 * w, 3, padding=1), torch.nn.ReLU())
        self.upsample = torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.d2 = torch.nn.Sequential(torch.nn.Conv2d(3 * w, w, 3, padding=1), torch.nn.ReLU())
        self.out = torch.nn.Conv2d(w, 1, 1)

    def forward(self, x):
        a = self.e1(x)
        b = self.e2(a)
        c = self.e3(b)
        u = self.d1(torch.cat([self.up(c), b], 1))
        return self.out(self.d2(torch.cat([self.upsample(u), a], 1)))


def make() -> torch.nn.Module:
    return UNet()


def task_arrays(n: int = 600, seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Blobs and bars on a dark field (``y``) and the same with Gaussian noise (``x``)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    cx, cy, w, bar = rng.uniform(0.15, 0.85, (4, n, 1, 1)).astype(np.float32)
    clean = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.01 + 0.04 * w))
    clean = clean + 0.5 * (np.abs(xx - bar) < 0.04)
    clean = clean[:, None].astype(np.float32)
    noisy = clean + rng.normal(0, 0.25, clean.shape).astype(np.float32)
    return noisy, clean


def write_task(path: str) -> None:
    x, y = task_arrays()
    np.savez(path, x=x, y=y)


if __name__ == "__main__":
    write_task(sys.argv[1] if len(sys.argv) > 1 else "images.npz")
