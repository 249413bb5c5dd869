"""Concrete input shapes for ONNX models with dynamic dimensions.

Models from other tools often declare dynamic dimensions: ``-1`` (Paddle), or symbolic ones
(``'?'``, ``'batch'``, ``'height'``). Calibration, FLOP counts, TVM builds and timing need a
concrete shape; the user gives it as one shape (``1,3,48,320``), or one per input by name
(``x=1,3,48,320`` and ``sr=1``; in Python and recipes ``{"x": [1, 3, 48, 320], "sr": [1]}``).

- ``parse_input_shape`` reads what a user gives (CLI text, repeated options, a list, a dict);
- ``resolve_input_shapes`` matches it against the model's inputs: a given shape that contradicts
  a fixed dimension, and a model left with a dynamic dimension beyond the batch axis, are
  ``InputError`` naming the input, its declared shape and what to pass;
- ``fix_input_dims`` writes the shapes into the graph's inputs and infers every other shape
  again (an ONNX-level fix, done before onnxruntime's calibration or TVM's import).

A dynamic batch axis (axis 0) without a given shape stays dynamic: onnxruntime and TVM run it,
and the runners time it at batch 1. ``-1`` there becomes a symbolic dimension.

Example:
    >>> from edgeopt.core.tensors import TensorSpec
    >>> from edgeopt.compile.onnx_shapes import parse_input_shape, resolve_input_shapes
    >>> parse_input_shape(["x=1,3,48,320", "sr=1"])
    {'x': (1, 3, 48, 320), 'sr': (1,)}
    >>> resolve_input_shapes([TensorSpec("x", [-1, 3, "h", "w"], "float32")], "1,3,48,320")
    {'x': [1, 3, 48, 320]}
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from edgeopt.core.errors import InputError, first_line
from edgeopt.core.tensors import TensorSpec

#: How the option is named where no caller names it (CLI commands and recipes share the word).
OPTION = "--input-shape (recipe: input_shape)"


def parse_input_shape(value: Any) -> tuple | dict | None:
    """A user's input shape as ``None``, one shape (a tuple of ints), or ``{input name: tuple}``.

    Accepts ``"1,3,48,320"`` (``x`` also separates), ``"x=1,3,48,320"``, a list of such strings
    (a repeated CLI option), a list of ints, or a mapping from input name to a list or a string.
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {str(k): _dims(v, f"input_shape for {k!r}") for k, v in value.items()} or None
    if isinstance(value, str):
        value = [value]
    items = list(value)
    if not items:
        return None
    if all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        return _dims(items, "input_shape")
    if not all(isinstance(v, str) for v in items):
        raise InputError(f"input shape {value!r}: expected a list of positive integers, "
                         "'1,3,32,32', or 'NAME=1,3,32,32' per input")
    named = [v for v in items if "=" in v]
    if not named:
        if len(items) > 1:
            raise InputError(f"input shapes {items}: name the input of each (NAME=1,3,32,32) "
                             "when giving more than one")
        return _dims(items[0], "input shape")
    if len(named) != len(items):
        raise InputError(f"input shapes {items}: name the input of each (NAME=1,3,32,32) "
                         "when giving more than one")
    shapes: dict = {}
    for v in items:
        name, _, dims = v.partition("=")
        name = name.strip()
        if not name or name in shapes:
            raise InputError(f"input shape {v!r}: expected NAME=1,3,32,32 with each input named once")
        shapes[name] = _dims(dims, f"input shape {v!r}")
    return shapes


def _dims(value: Any, what: str) -> tuple:
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace("x", ",").split(",")]
        try:
            dims = tuple(int(p) for p in parts)
        except ValueError:
            raise InputError(f"{what} {value!r} is malformed; expected comma-separated positive "
                             "integers, e.g. 1,3,32,32") from None
    elif isinstance(value, (list, tuple)) and all(isinstance(d, int) and not isinstance(d, bool)
                                                  for d in value):
        dims = tuple(value)
    else:
        raise InputError(f"{what} {value!r}: expected a list of positive integers, e.g. [1, 3, 32, 32]")
    if not dims or any(d < 1 for d in dims):
        raise InputError(f"{what} {value!r} must have positive dimensions, e.g. 1,3,32,32")
    return dims


def is_dynamic(dim: Any) -> bool:
    """A symbolic dimension (a name; ``onnx_io`` names a ``-1`` "-1") or a negative size."""
    return not isinstance(dim, int) or dim < 0


def show_shape(shape: Sequence) -> str:
    """``[-1, 3, h, w]``: a declared shape as the file has it (symbolic names unquoted)."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


def resolve_input_shapes(inputs: Sequence[TensorSpec], given: Any, option: str = OPTION,
                         keep_dynamic_batch: bool = True) -> dict[str, list]:
    """``{input name: shape}`` for every input: the given shape where there is one, else the
    declared one (a dynamic axis 0 kept symbolic when ``keep_dynamic_batch``).

    Raises:
        InputError: a name that is no input, a shape of another rank or that contradicts a
            fixed dimension (naming the input, its declared shape and what was given), one
            unnamed shape for a model with several inputs, or an input left with a dynamic
            dimension that needs a size (naming ``option``).
    """
    shapes = parse_input_shape(given)
    names = [s.name for s in inputs]
    if isinstance(shapes, tuple):
        if len(inputs) != 1:
            raise InputError(f"{option}: the model has {len(inputs)} inputs ({', '.join(names)}); give one "
                             f"shape per input by name ({', '.join(f'{n}=...' for n in names)})")
        shapes = {names[0]: shapes}
    shapes = shapes or {}
    unknown = [n for n in shapes if n not in names]
    if unknown:
        raise InputError(f"{option}: the model has no input {unknown[0]!r}; its inputs are "
                         f"{', '.join(names)}")
    out: dict[str, list] = {}
    for spec in inputs:
        declared = list(spec.shape)
        if spec.name in shapes:
            dims = shapes[spec.name]
            wrong = [i for i, (d, g) in enumerate(zip(declared, dims)) if not is_dynamic(d) and d != g]
            if len(dims) != len(declared) or wrong:
                why = (f"rank {len(dims)}, the input has rank {len(declared)}" if len(dims) != len(declared)
                       else f"dim {wrong[0]} is fixed at {declared[wrong[0]]}")
                raise InputError(f"input {spec.name!r} has declared shape {show_shape(declared)}; "
                                 f"{option} gives {show_shape(dims)} ({why})")
            out[spec.name] = list(dims)
            continue
        dynamic = [i for i, d in enumerate(declared) if is_dynamic(d)]
        if keep_dynamic_batch and dynamic == [0]:
            name = declared[0] if isinstance(declared[0], str) and declared[0] != "-1" else "batch"
            out[spec.name] = [name, *declared[1:]]
        elif dynamic:
            example = ",".join(("1" if i == 0 else "<size>") if is_dynamic(d) else str(d)
                               for i, d in enumerate(declared))
            prefix = f"{spec.name}=" if len(inputs) > 1 else ""
            raise InputError(f"input {spec.name!r} has declared shape {show_shape(declared)} with dynamic "
                             f"dimension(s) {', '.join(str(i) for i in dynamic)}; pass a concrete shape "
                             f"with {option}, e.g. {prefix}{example}")
        else:
            out[spec.name] = declared
    return out


def concrete_specs(inputs: Sequence[TensorSpec], shapes: Mapping[str, list]) -> list[TensorSpec]:
    """``inputs`` with the shapes ``resolve_input_shapes`` chose."""
    return [TensorSpec(s.name, list(shapes.get(s.name, s.shape)), s.dtype) for s in inputs]


def fix_input_dims(model, shapes: Mapping[str, Sequence] | None = None):
    """A copy of the ``onnx.ModelProto`` with its inputs' dimensions set and shapes re-inferred.

    ``shapes`` maps input names to dimensions (an int fixes a dimension, a string names a
    symbolic one). Every ``-1`` dimension of an input, output or stored value becomes symbolic
    (ONNX says a dimension is a size or a name; onnx's shape inference rejects -1 against a
    size). Stored intermediate shapes are dropped and inferred again from the new inputs, so a
    fixed input makes every shape that follows from it static (what calibration, FLOP counts
    and TVM's import need).
    """
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    shapes = dict(shapes or {})
    negative = False  # any -1 met: the stored shapes are inferred again
    inits = {i.name for i in g.initializer}
    for v in g.input:
        if v.name in inits or not v.type.HasField("tensor_type"):
            continue
        dims = v.type.tensor_type.shape.dim
        if v.name in shapes:
            wanted = list(shapes[v.name])
            del dims[:]
            for d in wanted:
                dim = v.type.tensor_type.shape.dim.add()
                if isinstance(d, int) and d >= 0:
                    dim.dim_value = d
                else:
                    dim.dim_param = str(d)
        else:
            for i, d in enumerate(dims):
                if d.HasField("dim_value") and d.dim_value < 0:
                    d.Clear()
                    d.dim_param = f"{v.name}_dim{i}"
                    negative = True
    changed = bool(shapes)
    for v in g.output:
        for d in v.type.tensor_type.shape.dim if v.type.HasField("tensor_type") else ():
            # inferred again: -1 contradicts any size, and a name would stay where a size follows
            below = d.HasField("dim_value") and d.dim_value < 0
            if below or (changed and not d.HasField("dim_value")):
                d.Clear()
            negative |= below
    negative |= any(d.HasField("dim_value") and d.dim_value < 0 for v in g.value_info
                    if v.type.HasField("tensor_type") for d in v.type.tensor_type.shape.dim)
    if not (changed or negative):
        return out
    del g.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(out, strict_mode=False, data_prop=True)
    except Exception as e:  # noqa: BLE001 - a given shape the graph cannot take (a Reshape to a fixed size)
        given = ", ".join(f"{k} {show_shape(v)}" for k, v in shapes.items())
        raise InputError(f"the model cannot take the input shape(s) {given or '(declared)'}: ONNX shape "
                         f"inference failed: {first_line(e)}") from None


def onnx_inputs(model) -> list[TensorSpec]:
    """The graph inputs of an ``onnx.ModelProto`` (initializers excluded) as ``TensorSpec``."""
    from edgeopt.runtimes.onnx_file import onnx_io

    return onnx_io(model)[0]
