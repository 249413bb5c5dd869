"""Calibration data for ONNX quantization: feeds that fit the model, and onnxruntime's reader.

``calibration_feeds`` turns what a user passes (an array, a ``.npz`` mapping, a task or split, a
list of samples) into ``{input name: array}`` feeds checked against the model's inputs;
``CalibrationReader`` hands them to onnxruntime's calibrators. quantize, qat and the per-layer
debugger all read calibration data through here, so it lives below all three.

Example:
    >>> import numpy as np
    >>> from edgeopt.core.tensors import TensorSpec
    >>> feeds = calibration_feeds(np.zeros((4, 1, 3), np.float32), [TensorSpec("x", (1, 3), "float32")])
    >>> len(feeds), feeds[0]["x"].shape
    (4, (1, 3))
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any, Sequence

import numpy as np

from edgeopt.core.errors import InputError
from edgeopt.core.tensors import TensorSpec
from edgeopt.runtimes.base import check_array


def calibration_feeds(data: Any, inputs: Sequence[TensorSpec], limit: int | None = None) -> list[dict]:
    """Turn calibration data into a list of {input name: array} feeds that fit the model.

    Raises ``InputError`` for empty data and for samples of the wrong shape or dtype (naming the
    sample and what the model expects).
    """
    if data is None:
        raise InputError("static quantization needs calibration data; got none "
                         "(pass samples, or use mode='dynamic')")
    if hasattr(data, "x") and not isinstance(data, np.ndarray):
        data = data.x
    names = [s.name for s in inputs]
    if isinstance(data, dict):  # {input name: stacked array}, e.g. a .npz
        if set(data) != set(names):
            raise InputError(f"calibration data holds arrays {sorted(data)}; the model takes inputs {names} "
                             "(a .npz holds one array per input, named as the inputs, or x and y of a task)")
        split = {spec.name: split_batch(np.asarray(data[spec.name]), spec) for spec in inputs}
        counts = {len(v) for v in split.values()}
        if len(counts) != 1:
            raise InputError("calibration arrays hold different numbers of samples: "
                             + ", ".join(f"{k} {len(v)}" for k, v in split.items()))
        samples = [{k: v[i] for k, v in split.items()} for i in range(counts.pop())]
    elif isinstance(data, np.ndarray):
        samples = split_batch(data, inputs[0])
    else:
        samples = list(data)
    if len(samples) == 0:
        raise InputError("calibration data is empty: expected at least one sample of shape "
                         f"{tuple(inputs[0].shape)}")
    feeds = []
    for i, s in enumerate(samples[:limit] if limit else samples):
        if isinstance(s, dict):
            feed = s
        elif len(inputs) == 1:
            feed = {names[0]: s}
        else:
            feed = dict(zip(names, s))
        if set(feed) != set(names):
            raise InputError(f"calibration sample {i} has inputs {sorted(feed)}; the model takes {names}")
        for spec in inputs:
            a = np.asarray(feed[spec.name])
            try:
                check_array(spec, a)
            except InputError as e:
                raise InputError(f"calibration sample {i}: {e}") from None
            refuse_non_finite(a, f"calibration sample {i}, input {spec.name!r}")
        # np.asarray(order="C") keeps a 0-d input 0-d (ascontiguousarray makes it (1,), which
        # the model's scalar input then rejects)
        feeds.append({k: np.asarray(v, order="C") for k, v in feed.items()})
    return feeds


#: Ops that pass an answer on to a graph output without computing it (the head after the last
#: conv or matmul: activations, joins, reshapes, box decoding arithmetic, a mean over frames).
ANSWER_OPS = frozenset({"Sigmoid", "Softmax", "LogSoftmax", "Tanh", "Relu", "Clip", "Concat", "Split", "Reshape",
                        "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Slice", "Gather", "Mul",
                        "Add", "Sub", "Div", "Cast", "ReduceMean", "ReduceMax", "ReduceMin"})


def answer_tensors(model) -> set[str]:
    """The tensors whose values a graph output reads as they are: the outputs and, walking back
    through ``ANSWER_OPS``, every tensor up to and including the output of the compute op (or any
    other op) that made it. A calibration that averages or clips ranges must give these their full
    range: averaging per-sample extremes of a value that is one number per sample (a speech
    logit) or whose per-sample maximum is usually negative (the class logits of a detector on
    images without that class) puts the top of the range at or below 0, and every high score reads
    the same.

    >>> from onnx import TensorProto, helper
    >>> g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["logit"]),
    ...                        helper.make_node("Sigmoid", ["logit"], ["p"])], "g",
    ...                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
    ...                       [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 1, 4, 4])],
    ...                       [helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 1, 1], [1.0])])
    >>> sorted(answer_tensors(helper.make_model(g)))
    ['logit', 'p']
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    constants = {i.name for i in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    found: set[str] = set()
    todo = [o.name for o in graph.output]
    while todo:
        name = todo.pop()
        if name in found or name in constants:
            continue
        found.add(name)
        node = producer.get(name)
        if node is not None and node.op_type in ANSWER_OPS:
            todo.extend(i for i in node.input if i)
    return found


def refuse_non_finite(a: np.ndarray, what: str) -> None:
    """``InputError`` for NaN or infinite values: the ranges calibrated from them would be NaN
    (onnxruntime then fails with "scale issue") or, for one NaN among many samples, silently
    ignored by its nan-aware statistics while the data is plainly wrong."""
    if a.dtype.kind not in "fc":
        return
    bad = ~np.isfinite(a)
    if bad.any():
        nan, inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
        found = " and ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "infinite")) if n)
        raise InputError(f"{what} holds {found} value(s) out of {a.size}; expected finite numbers")


def split_batch(x: np.ndarray, spec: TensorSpec) -> list[np.ndarray]:
    """A stacked array (N, ...) becomes N samples of the model's fixed batch size.

    Example:
        >>> from edgeopt.core.tensors import TensorSpec
        >>> len(split_batch(np.zeros((6, 3)), TensorSpec("x", (2, 3), "float32")))
        3
    """
    if x.ndim == len(spec.shape) + 1:  # one sample per row: a scalar or (1,) input stacked
        return list(x)
    b = spec.shape[0] if spec.shape and isinstance(spec.shape[0], int) else None
    if b is None or x.ndim != len(spec.shape):
        return [x] if x.size else []
    if len(x) % b:
        raise InputError(f"calibration array of {len(x)} samples does not split into batches of {b}")
    return [x[i:i + b] for i in range(0, len(x), b)]


class CalibrationReader:
    """onnxruntime's ``CalibrationDataReader`` over a list of feeds (quantize and qat calibrate
    through it).

    Example:
        >>> r = CalibrationReader([{"x": 1}, {"x": 2}])
        >>> r.get_next(), r.get_next(), r.get_next(), len(r)
        ({'x': 1}, {'x': 2}, None, 2)
    """

    def __init__(self, feeds: list[dict]):
        self.feeds = feeds
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self.feeds)

    def __len__(self):
        return len(self.feeds)


@contextlib.contextmanager
def quiet_onnxruntime():
    """onnxruntime.quantization logs warnings and prints for routine steps; keep them out of
    edgeopt's output (quantize and qat run its calibrators and quantizer inside this)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
