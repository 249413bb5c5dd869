"""A pre-pass for third-party ONNX files before quantizing or compiling them.

Models exported by other tools are often at an old opset (9-12), keep their weights in
``Constant`` nodes instead of initializers, compute constant sub-graphs at run time (shapes for
``Reshape``) and carry no shape information. ``prepare_onnx`` normalises that:

1. upgrades the default-domain opset to ``TARGET_OPSET`` (17) when it is lower
   (``onnx.version_converter``);
2. turns ``Constant`` nodes into initializers, and drops initializers listed as graph inputs;
   inputs held at one value (``constant_inputs``) become initializers too;
3. folds constant sub-graphs (every input constant, deterministic op) into initializers with
   onnx's reference evaluator, and ``Shape`` of statically shaped tensors, repeatedly;
   An ``If`` whose condition is then constant is replaced by the branch it takes;
4. infers shapes (``onnx.shape_inference``, with data propagation);
5. with ``static_graph=True`` (TVM builds: the Relax importer has no recurrent or control-flow
   converters), unrolls LSTM / GRU / RNN nodes into plain ops over the static sequence length
   and refuses a data-dependent ``If`` naming the node (``edgeopt.compile.onnx_recurrent``);
6. optionally checks the ops against what a backend supports, naming each missing op's node.

Quantize / dequantize nodes are never folded: the int8 rewrite and the quantizer look for them.

Example:
    >>> import numpy as np
    >>> from onnx import TensorProto, helper, numpy_helper
    >>> from edgeopt.compile.onnx_prepare import prepare_onnx
    >>> w = helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(np.ones((2, 3), np.float32)))
    >>> mm = helper.make_node("MatMul", ["x", "w"], ["y"])
    >>> g = helper.make_graph([w, mm], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
    ...                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    >>> m = prepare_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)]))
    >>> [n.op_type for n in m.graph.node], [i.name for i in m.graph.initializer], m.opset_import[0].version
    (['MatMul'], ['w'], 17)
    >>> [d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim]
    [1, 3]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from edgeopt.core.errors import InputError, first_line

TARGET_OPSET = 17
# Never folded: random ops (a value per run), control flow (sub-graphs), and the quantization
# ops whose patterns the quantizer and the TVM int8 rewrite match on.
NO_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
           "Bernoulli", "Dropout", "If", "Loop", "Scan", "QuantizeLinear", "DequantizeLinear",
           "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
# A folded tensor larger than this stays computed at run time (it would bloat the file).
MAX_FOLD_BYTES = 16 << 20
DEFAULT_DOMAINS = ("", "ai.onnx")


def prepare_onnx(model, target_opset: int = TARGET_OPSET,
                 supported: Iterable[str] | Callable[[str], bool] | None = None,
                 backend: str = "the backend", input_shapes: dict | None = None,
                 static_graph: bool = False, constant_inputs: dict | None = None):
    """The prepared copy of ``model`` (a path or an ``onnx.ModelProto``, not modified).

    Args:
        model: ONNX file path or ``ModelProto``.
        target_opset: the lowest default-domain opset the result has.
        supported: op types the consumer supports (a collection, or a predicate on the op type);
            any other default-domain op is an ``InputError`` naming the op and its node(s).
        backend: the consumer's name, for that error.
        input_shapes: ``{input name: dims}`` written into the graph's inputs before shapes are
            inferred and folded (``edgeopt.compile.onnx_shapes.fix_input_dims``; an int fixes a
            dimension); ``-1`` dimensions become symbolic either way.
        static_graph: unroll recurrent nodes and refuse data-dependent control flow, for a
            consumer without loops or branches (onnxruntime runs LSTM / GRU nodes natively and
            faster: keep them there).
        constant_inputs: ``{input name: value}``: inputs held at one value (a sample rate), made
            constants of the graph (``freeze_inputs``) before folding, so a branch on them is
            inlined (its dead branch gone: silero-vad's 8 kHz branch contradicts a 16 kHz chunk
            length, and onnxruntime refuses that model once the length is fixed).

    Raises:
        InputError: not an ONNX model, a conversion that fails (naming the op), unsupported
            ops, or (``static_graph``) a recurrent node over a dynamic sequence length or a
            data-dependent ``If`` / ``Loop``.
    """
    import onnx

    from .onnx_recurrent import check_static_control_flow, inline_constant_ifs, unroll_recurrent

    if isinstance(model, (str, os.PathLike)):
        from edgeopt.runtimes.onnx_file import load_onnx

        model = load_onnx(model)
    elif not isinstance(model, onnx.ModelProto):
        raise InputError(f"prepare_onnx takes an ONNX file path or an onnx.ModelProto, got "
                         f"{type(model).__name__}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _upgrade(out, target_opset)
    _constants_to_initializers(out.graph)
    _drop_initializer_inputs(out)
    freeze_inputs(out, constant_inputs)
    from .onnx_shapes import fix_input_dims

    out = fix_input_dims(out, input_shapes)  # static inputs make Shape/Reshape chains foldable
    for _ in range(8):  # folding Shape needs shapes, which folding may make static: iterate
        out = _infer(out)
        folded = _fold(out)
        inlined = inline_constant_ifs(out)
        if inlined:  # a branch body keeps its weights in Constant nodes
            _constants_to_initializers(out.graph)
        if not (folded or inlined):
            break
    out = _infer(out)
    if static_graph:
        check_static_control_flow(out)
        out = _infer(unroll_recurrent(out))
    if supported is not None:
        check_ops(out, supported, backend)
    return out


def freeze_inputs(model, values: dict | None) -> None:
    """Make the graph inputs named in ``values`` initializers holding those values (in the
    input's dtype), in place; they are no longer fed.

    Raises:
        InputError: a name that is no input (naming the inputs), a value that is not a number or
            an array of numbers, or one whose shape does not fit the input's declared shape.

    >>> from onnx import TensorProto, helper
    >>> g = helper.make_graph([helper.make_node("Cast", ["sr"], ["y"], to=TensorProto.FLOAT)], "g",
    ...     [helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    >>> m = helper.make_model(g)
    >>> freeze_inputs(m, {"sr": 16000})
    >>> from onnx import numpy_helper
    >>> [i.name for i in m.graph.input], numpy_helper.to_array(m.graph.initializer[0]).tolist()
    ([], 16000)
    """
    from onnx import helper, numpy_helper

    if not values:
        return
    graph = model.graph
    inputs = {v.name: v for v in graph.input}
    unknown = [n for n in values if n not in inputs]
    if unknown:
        raise InputError(f"constant input {unknown[0]!r} is no input of the model; its inputs are "
                         f"{', '.join(inputs)}")
    for name, value in values.items():
        spec = inputs[name]
        dtype = helper.tensor_dtype_to_np_dtype(spec.type.tensor_type.elem_type)
        try:
            array = np.asarray(value)
            if array.dtype.kind not in "biuf":
                raise ValueError(f"a {array.dtype} value")
            array = array.astype(dtype)
        except (TypeError, ValueError) as e:
            raise InputError(f"constant input {name!r}: {value!r} is not a number or an array of numbers "
                             f"({first_line(e)})") from None
        declared = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?"
                    for d in spec.type.tensor_type.shape.dim]
        if array.ndim != len(declared) or any(isinstance(d, int) and d != n for d, n in zip(declared, array.shape)):
            raise InputError(f"constant input {name!r}: a value of shape {list(array.shape)}; the input's "
                             f"declared shape is {declared}")
        graph.initializer.append(numpy_helper.from_array(array, name))
    kept = [v for v in graph.input if v.name not in values]
    del graph.input[:]
    graph.input.extend(kept)


def prepare_onnx_file(src: str | os.PathLike, dst: str | os.PathLike, **kwargs) -> Path:
    """``prepare_onnx(src)`` written to ``dst`` (for consumers that read files); returns ``dst``."""
    import onnx

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    prepared = prepare_onnx(src, **kwargs)
    # Large models exceed protobuf's 2 GB limit inline; keep their weights next to the graph.
    large = prepared.ByteSize() > (1 << 30)
    onnx.save(prepared, str(dst), save_as_external_data=large,
              location=f"{dst.name}.data" if large else None)
    return dst


def check_ops(model, supported: Iterable[str] | Callable[[str], bool], backend: str) -> None:
    """``InputError`` naming every op (and its first nodes) of ``model`` that ``supported``
    lacks; ops of other domains are named with their domain."""
    known = supported if callable(supported) else set(supported).__contains__
    missing: dict[str, list[str]] = {}
    for i, n in enumerate(model.graph.node):
        op = n.op_type if n.domain in DEFAULT_DOMAINS else f"{n.domain}.{n.op_type}"
        if not known(n.op_type) or n.domain not in DEFAULT_DOMAINS:
            missing.setdefault(op, []).append(n.name or f"#{i}")
    if missing:
        listed = "; ".join(f"{op} (node{'s' if len(nodes) > 1 else ''} "
                           f"{', '.join(repr(x) for x in nodes[:3])}"
                           f"{f' and {len(nodes) - 3} more' if len(nodes) > 3 else ''})"
                           for op, nodes in missing.items())
        raise InputError(f"{backend} lacks op(s) {listed}")


def _default_opset(model) -> int | None:
    for o in model.opset_import:
        if o.domain in DEFAULT_DOMAINS:
            return o.version
    return None


def _upgrade(model, target: int) -> None:
    from onnx import version_converter

    version = _default_opset(model)
    if version is None or version >= target:
        return
    try:
        converted = version_converter.convert_version(model, target)
    except Exception as e:  # the converter names the node it could not adapt in its message
        raise InputError(f"cannot upgrade the ONNX model from opset {version} to {target}: "
                         f"{first_line(e)}") from None
    model.CopyFrom(converted)
    # Opset 17 needs IR version 8; old files converted up keep their old IR number otherwise.
    model.ir_version = max(model.ir_version, 8)


def _constant_value(node) -> np.ndarray | None:
    """The value of a ``Constant`` node (any of its attribute forms), or None (sparse)."""
    from onnx import helper, numpy_helper

    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_float", "value_int", "value_string"):
            v = helper.get_attribute_value(a)
            return np.array(v, dtype=np.float32 if a.name == "value_float" else
                            np.int64 if a.name == "value_int" else object)
        if a.name in ("value_floats", "value_ints", "value_strings"):
            v = helper.get_attribute_value(a)
            return np.array(v, dtype=np.float32 if a.name == "value_floats" else
                            np.int64 if a.name == "value_ints" else object)
    return None


def _constants_to_initializers(graph) -> None:
    from onnx import numpy_helper

    keep = []
    for node in graph.node:
        value = _constant_value(node) if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS else None
        if value is None:
            keep.append(node)
            continue
        graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
    del graph.node[:]
    graph.node.extend(keep)


def _drop_initializer_inputs(model) -> None:
    """IR < 4 listed every initializer as a graph input too; since IR 4 an initializer that is
    also an input is an overridable default, which stops constant folding and quantization."""
    if model.ir_version < 4:
        return
    init = {i.name for i in model.graph.initializer}
    keep = [v for v in model.graph.input if v.name not in init]
    if len(keep) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(keep)


def _infer(model):
    from onnx import shape_inference

    try:
        return shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as e:  # contradictory shapes: the model would fail later, say so now
        raise InputError(f"ONNX shape inference failed: {first_line(e)}") from None


def _static_shape(model, name: str) -> list[int] | None:
    for v in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        if v.name == name and v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            dims = v.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                return [d.dim_value for d in dims]
    return None


def _fold(model) -> bool:
    """Fold constant nodes into initializers; True when anything changed."""
    from onnx import numpy_helper

    graph = model.graph
    consts = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    opset = _default_opset(model) or TARGET_OPSET
    keep, changed = [], False
    for node in graph.node:
        values = None
        if node.domain in DEFAULT_DOMAINS and node.op_type == "Shape" and len(node.attribute) == 0:
            shape = _static_shape(model, node.input[0])
            if shape is not None:
                values = [np.array(shape, dtype=np.int64)]
        elif (node.domain in DEFAULT_DOMAINS and node.op_type not in NO_FOLD and node.input
              and all(i == "" or i in consts for i in node.input)
              and not any(o in outputs for o in node.output)):
            values = _evaluate(node, [consts.get(i) for i in node.input], opset)
        if values is None or any(v.nbytes > MAX_FOLD_BYTES for v in values):
            keep.append(node)
            continue
        for name, v in zip(node.output, values):
            t = numpy_helper.from_array(np.asarray(v), name)
            graph.initializer.append(t)
            consts[name] = t
        changed = True
    if changed:
        del graph.node[:]
        graph.node.extend(keep)
        _drop_unused_initializers(graph)
    return changed


def _evaluate(node, inputs, opset: int) -> list[np.ndarray] | None:
    """The outputs of one node on constant inputs, or None when the reference evaluator cannot
    run it (then the node stays in the graph)."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    feeds = {n: numpy_helper.to_array(t) for n, t in zip(node.input, inputs) if t is not None}
    graph = helper.make_graph(
        [node], "fold",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in feeds.items()],
        [helper.make_empty_tensor_value_info(o) for o in node.output if o])
    try:
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        results = ReferenceEvaluator(model).run(None, feeds)
    except Exception:  # an op or attribute the reference evaluator lacks: leave it to the runtime
        return None
    return [np.asarray(r) for r in results]


def _drop_unused_initializers(graph) -> None:
    from .onnx_recurrent import used_names  # sub-graphs (If/Loop bodies) read outer-scope values

    used = used_names(graph)
    keep = [t for t in graph.initializer if t.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)
