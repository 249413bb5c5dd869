"""Cheap label-preserving augmentation for image batches used by training loops.

Example:
    >>> import torch
    >>> from edgeopt.compress.augment import random_shift
    >>> random_shift(torch.zeros(2, 1, 8, 8), 2, torch.Generator().manual_seed(0)).shape
    torch.Size([2, 1, 8, 8])
"""

from __future__ import annotations


def random_shift(xb, shift: int, gen):
    """Translate each image of an (N, C, H, W) batch by up to ``shift`` pixels, padding with the
    batch minimum (the background of normalized images). Other ranks pass through unchanged."""
    import torch

    if shift == 0 or xb.ndim != 4:
        return xb
    n, _, h, w = xb.shape
    padded = torch.nn.functional.pad(xb, (shift, shift, shift, shift), value=float(xb.min()))
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    return torch.stack([padded[k, :, dy[k]:dy[k] + h, dx[k]:dx[k] + w] for k in range(n)])
