"""Parameter and FLOP counting for torch modules and ONNX graphs.

FLOPs count multiply-adds as two operations, for Conv (grouped and depthwise included),
Gemm and MatMul (attention matmuls included), and recurrent layers (LSTM, GRU, RNN: their gate
matmuls, ``2 * steps * batch * (numel(W) + numel(R))``, e.g. ``2 * (in * 4h + h * 4h)`` per step
and direction for an LSTM); other ops are cheap next to them and are not counted. ONNX shapes
come from ONNX shape inference, so the count needs static shapes.

Recurrent layers are counted by that formula on both sides, torch and ONNX, so every report
gives a model one number: torch's flop counter sees an ``nn.GRU``'s matmuls but not an
``nn.LSTM``'s (its CPU kernel is one fused call), and ONNX's LSTM / GRU nodes are single ops.

Example:
    >>> import torch
    >>> from edgeopt.compress.counting import count_params
    >>> count_params(torch.nn.Linear(4, 2))
    10
    >>> from edgeopt.compress.counting import count_flops
    >>> count_flops(torch.nn.Linear(4, 2), torch.zeros(1, 4))
    16
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from edgeopt.core.errors import InputError

# ONNX's recurrent ops: W is (directions, gates x hidden, in), R (directions, gates x hidden, hidden).
RECURRENT_OPS = ("LSTM", "GRU", "RNN")


def count_params(model) -> int:
    """Number of parameter elements of a torch module (buffers such as BN statistics excluded)."""
    return int(sum(p.numel() for p in model.parameters()))


def count_flops(model, example_inputs) -> int:
    """FLOPs of one forward pass of a torch module on ``example_inputs`` (a tensor or tuple).

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmul, conv, attention matmuls,
    2 FLOPs per multiply-add), so functional matmuls are seen too, not only modules. Recurrent
    modules (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) are counted by the formula instead of whatever
    the counter saw inside them (``recurrent_flops``), the number ``onnx_flops`` gives their nodes.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    args = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    args = tuple(torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in args)
    recurrent = [m for m in model.modules() if isinstance(m, torch.nn.RNNBase)]
    replaced = [0]  # FLOPs the counter saw inside recurrent modules, and the formula's count
    counted_before: list[int] = []

    def before(module, inputs):
        counted_before.append(counter.get_total_flops())

    def after(module, inputs, kwargs, output):
        inside = counter.get_total_flops() - counted_before.pop()
        sequence = inputs[0] if inputs else kwargs["input"]
        replaced[0] += recurrent_flops(module, sequence) - inside

    hooks = [h for m in recurrent for h in (m.register_forward_pre_hook(before),
                                            m.register_forward_hook(after, with_kwargs=True))]
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(*args)
    finally:
        for h in hooks:
            h.remove()
    return int(counter.get_total_flops() + replaced[0])


def recurrent_flops(module, sequence) -> int:
    """FLOPs of one call of a torch recurrent module (``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``) on
    ``sequence`` (a tensor, batched or not, or a ``PackedSequence``): 2 FLOPs per multiply-add
    of every gate matmul (input, hidden and LSTM projection weights) at every step."""
    from torch.nn.utils.rnn import PackedSequence

    if isinstance(sequence, PackedSequence):
        rows = int(sequence.data.shape[0])  # steps x batch, summed over the sequences
    elif sequence.dim() == 2:  # unbatched [steps, features]
        rows = int(sequence.shape[0])
    else:
        rows = int(sequence.shape[0]) * int(sequence.shape[1])
    weights = sum(int(p.numel()) for name, p in module.named_parameters(recurse=False)
                  if name.startswith("weight_"))
    return 2 * rows * weights


def model_stats(model, example_inputs) -> dict:
    """``{"params": ..., "flops": ...}`` for step records."""
    return {"params": count_params(model), "flops": count_flops(model, example_inputs)}


def onnx_flops(model: Any, input_shape: Any = None) -> int:
    """FLOPs of one inference of an ONNX model (a ``ModelProto`` or a path), batch as given.

    ``input_shape`` (one shape, or ``{input name: shape}``) fixes dynamic input dimensions first
    (``edgeopt.compile.onnx_shapes``); a dynamic dimension left anywhere is an ``InputError``.
    """
    import onnx

    if isinstance(model, (str, os.PathLike)):
        from edgeopt.runtimes.onnx_file import load_onnx

        model = load_onnx(model, check=False)
    if input_shape is not None:
        from edgeopt.compile.onnx_shapes import fix_input_dims, onnx_inputs, resolve_input_shapes

        model = fix_input_dims(model, resolve_input_shapes(onnx_inputs(model), input_shape,
                                                           keep_dynamic_batch=False))
    model = onnx.shape_inference.infer_shapes(model)
    g = model.graph
    shapes: dict[str, list] = {}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        dims = v.type.tensor_type.shape.dim
        # -1 (Paddle's dynamic size) is no size either
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None for d in dims]
    for init in g.initializer:
        shapes[init.name] = list(init.dims)

    def shape(name: str) -> list:
        s = shapes.get(name)
        if s is None or any(d is None for d in s):
            raise InputError(f"ONNX value {name!r} has no static shape; FLOPs need static shapes "
                             "(export with a fixed batch, or give the input shape: --input-shape / "
                             "input_shape)")
        return s

    total = 0
    for node in g.node:
        if node.op_type in RECURRENT_OPS:
            x = shape(node.input[0])  # (steps, batch, in), or (batch, steps, in) with layout 1
            weights = int(np.prod(shape(node.input[1]))) + int(np.prod(shape(node.input[2])))
            total += 2 * x[0] * x[1] * weights
        elif node.op_type == "Conv":
            w = shape(node.input[1])  # (Cout, Cin/groups, kh, kw)
            y = shape(node.output[0])  # (N, Cout, Ho, Wo)
            total += 2 * int(np.prod(y)) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            a = shape(node.input[0])
            y = shape(node.output[0])
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            k = a[-2] if trans_a else a[-1]
            if len(a) == 1:
                k = a[0]
            total += 2 * int(np.prod(y)) * int(k)
    return int(total)
