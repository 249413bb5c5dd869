"""edgeopt.compress: torch-level and ONNX-level compression steps and their accounting.

Example:
    >>> import torch
    >>> import edgeopt.compress as ec
    >>> ec.count_params(torch.nn.Conv2d(1, 4, 3))
    40
"""

from .counting import count_flops, count_params, model_stats, onnx_flops
from .distill import DistillConfig, distill
from .fidelity import Fidelity, fidelity
from .history import history, last_record
from .lowrank import LowRankConfig, lowrank
from .prune import PruneConfig, prune
from .qat import QATConfig, qat
from .quantize import QuantizeConfig, quantize

__all__ = ["DistillConfig", "Fidelity", "LowRankConfig", "PruneConfig", "QATConfig", "QuantizeConfig",
           "count_flops", "count_params", "distill", "fidelity", "history", "last_record", "lowrank",
           "model_stats", "onnx_flops", "prune", "qat", "quantize"]
