"""edgeopt.compress: torch-level and ONNX-level compression steps and their accounting.

Example:
    >>> import torch
    >>> import edgeopt.compress as ec
    >>> ec.count_params(torch.nn.Conv2d(1, 4, 3))
    40
"""

from .counting import count_params, onnx_flops
from .fidelity import Fidelity, fidelity
from .quantize import QuantizeConfig, QuantizeResult, quantize

__all__ = ["Fidelity", "QuantizeConfig", "QuantizeResult", "count_params", "fidelity",
           "onnx_flops", "quantize"]
