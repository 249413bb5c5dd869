"""int8 by NNCF (``QuantizeConfig(engine="nncf")``): NNCF's post-training quantization of an
ONNX model, written as QDQ ONNX that onnxruntime, OpenVINO and TVM all run.

It exists to compare two quantizers on one runtime: edgeopt's onnxruntime-based flow and NNCF's
(OpenVINO's quantizer: per-channel symmetric int8 weights, fast bias correction). NNCF ships in
the optional ``openvino`` extra; without it the step exits 2 naming the extra.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Sequence

from edgeopt.core.errors import InputError

#: What to install when NNCF is missing.
EXTRA_HINT = ("engine nncf needs NNCF (the openvino extra): pip install -e .[openvino], "
              "or make setup")


def require_nncf() -> None:
    """``InputError`` naming the extra when NNCF is not installed (checked without importing it:
    importing NNCF takes seconds)."""
    import importlib.util

    if importlib.util.find_spec("nncf") is None:
        raise InputError(EXTRA_HINT)


def nncf_quantize(model: Path, feeds: list[dict], out: Path, ignored: Sequence[str] = ()) -> Path:
    """Quantize the ONNX file ``model`` with ``nncf.quantize`` on the calibration ``feeds``
    ({input name: array} per sample, all of them used), keeping the ``ignored`` nodes in float;
    write the QDQ model to ``out`` and return it."""
    try:
        import nncf
    except ImportError:
        raise InputError(EXTRA_HINT) from None
    import onnx

    if not feeds:
        raise InputError("engine nncf calibrates: it needs calibration data (static mode)")
    scope = nncf.IgnoredScope(names=list(ignored)) if ignored else None
    # NNCF's ONNX backend reads every dataset item as the session's feed dict
    dataset = nncf.Dataset(list(feeds))
    with _quiet():  # NNCF draws progress bars and logs each routine step
        quantized = nncf.quantize(onnx.load(str(model)), dataset, subset_size=len(feeds),
                                  ignored_scope=scope)
    onnx.save(quantized, str(out))
    return out


@contextlib.contextmanager
def _quiet():
    """NNCF's progress bars (rich, on stdout/stderr) and its INFO logger kept out of edgeopt's output."""
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        nncf_log.setLevel(level)
