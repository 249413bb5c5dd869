"""edgeopt.compress: torch-level and ONNX-level compression steps and their accounting.

Example:
    >>> import torch
    >>> import edgeopt.compress as ec
    >>> ec.count_params(torch.nn.Conv2d(1, 4, 3))
    40
"""

from .counting import count_params, onnx_flops

__all__ = ["count_params", "onnx_flops"]
