"""Reading ONNX files safely: clear errors for missing/corrupt files, io specs from the graph.

Example:
    >>> from edgeopt.runtimes.onnx_file import ONNX_DTYPES
    >>> ONNX_DTYPES[1]
    'float32'
"""

from __future__ import annotations

import os
from pathlib import Path

from edgeopt.core.tensors import TensorSpec
from edgeopt.core.errors import InputError, first_line

# onnx.TensorProto element types -> numpy dtype names (the subset models use).
ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64",
               9: "bool", 10: "float16", 11: "float64", 16: "bfloat16"}


def load_onnx(path: str | os.PathLike, check: bool = True):
    """Load and (optionally) check an ONNX model file; ``InputError`` if it is not one."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"ONNX model {str(path)!r} does not exist")
    if not path.is_file():
        raise InputError(f"ONNX model {str(path)!r} is not a file")
    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, RuntimeError, OSError) as e:
        raise InputError(f"{str(path)!r} is not a valid ONNX model (truncated or corrupt file?): {e}") from None
    if len(model.graph.node) == 0 and len(model.graph.output) == 0:
        raise InputError(f"{str(path)!r} is not a valid ONNX model: it holds no graph")
    if check:
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as e:
            raise InputError(f"{str(path)!r} fails the ONNX checker: {first_line(e)}") from None
    return model


def _value_spec(value) -> TensorSpec:
    tt = value.type.tensor_type
    dims = []
    for i, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value") and d.dim_value >= 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_value"):
            # -1 (Paddle's exports): any size, i.e. a symbolic dimension; named as the file has it
            dims.append("-1")
        else:
            dims.append(d.dim_param or f"d{i}")
    dtype = ONNX_DTYPES.get(tt.elem_type)
    if dtype is None:
        raise InputError(f"ONNX value {value.name!r} has element type {tt.elem_type}, "
                         f"expected one of {sorted(ONNX_DTYPES.values())}")
    return TensorSpec(value.name, dims, dtype)


def onnx_io(model) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Graph inputs (excluding initializers) and outputs as ``TensorSpec`` lists."""
    init = {i.name for i in model.graph.initializer}
    inputs = [_value_spec(v) for v in model.graph.input if v.name not in init]
    outputs = [_value_spec(v) for v in model.graph.output]
    return inputs, outputs
