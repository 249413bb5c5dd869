"""edgeopt.compile: torch -> ONNX export with parity checking, and TVM builds.

Import as ``import edgeopt.compile as eoc`` (never ``from edgeopt import compile``, which
would shadow the builtin).

Example:
    >>> import torch, tempfile, os
    >>> import edgeopt.compile as eoc
    >>> out = os.path.join(tempfile.mkdtemp(), "lin.onnx")
    >>> eoc.export(torch.nn.Linear(4, 2), eoc.ExportConfig(), torch.randn(1, 4), out=out).metrics["parity"]["passed"]
    True
"""

from .export import ExportConfig, ParityReport, export, parity_check
from .targets import resolve_target
from .tune import TuneConfig
from .tvm_build import BuildConfig, build

__all__ = ["BuildConfig", "ExportConfig", "ParityReport", "TuneConfig", "build", "export", "parity_check",
           "resolve_target"]
