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
    image's minimum (the background of normalized images). Other ranks pass through unchanged."""
    import torch

    if shift == 0 or xb.ndim != 4:
        return xb
    n = xb.shape[0]
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    return shift_by(xb, shift, dx, dy)


def shift_by(xb, shift: int, dx, dy):
    """Translate image k of an (N, C, H, W) batch by ``(dx[k] - shift, dy[k] - shift)`` pixels.

    Drawing the offsets per sample (not per batch) keeps augmentation the same however the
    samples are split into batches or across processes."""
    import torch

    if shift == 0 or xb.ndim != 4:
        return xb
    _, _, h, w = xb.shape
    out = []
    for k in range(len(xb)):
        # Pad with the image's own minimum (its background), so the result does not depend on
        # which other images share the batch.
        padded = torch.nn.functional.pad(xb[k], (shift, shift, shift, shift), value=float(xb[k].min()))
        out.append(padded[:, dy[k]:dy[k] + h, dx[k]:dx[k] + w])
    return torch.stack(out)
