"""int8 post-training quantization of ONNX models, on top of ``onnxruntime.quantization``.

Static mode: ORT pre-processing (symbolic shape inference, graph optimization that folds
BatchNorm into Conv), activation calibration on the given data (default "mean_minmax": the mean
of each sample's min and max, NNCF's estimator; also MinMax / Entropy / Percentile),
QDQ format, per-channel int8 weights and uint8 activations by default: on AVX-512 VNNI CPUs
U8S8 is the combination onnxruntime runs fast (S8S8 gave no speedup at all on ResNet-18).
Dynamic mode quantizes weights ahead and activations at run time (no calibration), for
MatMul-heavy models such as transformer encoders.

Accuracy-aware fallback: with ``max_accuracy_drop`` (needs labelled ``eval_data``; judged on the
task's metric: top-1 accuracy for class labels, the relative rise of mse / mae for regression
targets) or ``min_agreement`` (inputs only), the fully quantized model is scored; if it misses the budget,
each quantized compute node is put back in float on its own to measure its sensitivity, and the
most sensitive nodes are kept in float, one at a time, until the budget holds. Before that, the
transforms and then ``scope="compute"`` (int8 only where the compute ops read and write) are
tried. Calibration runs once: its ranges are cached and reused by every re-quantization.

Example:
    >>> import numpy as np  # doctest: +SKIP
    >>> import edgeopt.compress as ec  # doctest: +SKIP
    >>> calib = [np.random.rand(1, 1, 32, 32).astype("float32") for _ in range(32)]  # doctest: +SKIP
    >>> r = ec.quantize("build/demo/fp32-onnx/model.onnx", ec.QuantizeConfig(), calib,
    ...                 out="build/int8.onnx")  # doctest: +SKIP
    >>> r.record["metrics"]["size_ratio"] < 0.3  # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgeopt.core.config import StepConfig, config_argument
from edgeopt.core.files import atomic_file
from edgeopt.core.result import Progress, StepResult, reporter
from edgeopt.runtimes.artifact import Artifact, write_artifact
from edgeopt.core.errors import InputError
from edgeopt.core.phrases import listing

from .calibration import CalibrationReader, answer_tensors, calibration_feeds, quiet_onnxruntime
from .output_guard import guard

MODES = ("static", "dynamic")
CALIBRATIONS = ("minmax", "entropy", "percentile", "mean_minmax")
TYPES = ("uint8", "int8")
FORMATS = ("qdq", "qoperator")
#: Which activations become int8 (``QuantizeConfig.scope``).
SCOPES = ("all", "compute")
#: Who quantizes: edgeopt's onnxruntime-based flow, or NNCF's post-training quantization.
ENGINES = ("edgeopt", "nncf")
#: Ops whose quantization saves arithmetic; the fallback ranks these, and a model needs one.
COMPUTE_OPS = ("Conv", "MatMul", "Gemm", "ConvTranspose")
# Compute the quantizer leaves in float (no static int8 kernel): counted in the summary, named as float.
RECURRENT_OPS = ("LSTM", "GRU", "RNN")
#: Pre-quantization transforms (``quant_transforms``), in the order they apply.
TRANSFORMS = ("equalize", "smooth_quant", "bias_correction")
#: The default calibration method. mean_minmax replaced entropy (2026-11-27): on the four
#: Fashion-MNIST models of benchmarks/int8_accuracy.py its validation top-1 was higher on three
#: (+0.4 to +1.5 points) and 0.1 lower on one (benchmarks/RESULTS.md), and it calibrates ~15x
#: faster (no histograms).
_DEFAULT_METHOD = "mean_minmax"


@dataclass(frozen=True)
class QuantizeConfig(StepConfig):
    """How to quantize (see the module docstring).

    Args:
        mode: "static" (calibrated) or "dynamic".
        method: activation calibration method: "minmax", "entropy", "percentile" or
            "mean_minmax" (the mean over calibration samples of each sample's min and max, NNCF's
            per-tensor activation estimator) (static mode).
        per_channel: per-output-channel weight scales.
        max_accuracy_drop: largest allowed drop of the task's metric against the fp32 model on
            ``eval_data``; enables the fallback. Top-1 (class labels): a fraction, 0.005 = 0.5
            points; mse / mae (regression targets): the relative rise of the error, 0.05 = 5%
            above fp32's; cosine: a fall in cosine similarity.
        min_agreement: smallest allowed top-1 agreement with the fp32 model on ``eval_data``
            inputs (for data without labels); enables the fallback. With regression or
            embedding targets: the mean cosine similarity to the fp32 model's outputs. With
            inputs that carry a judge (a study's task that declares its outputs): the worst
            output's share, e.g. identical decoded sequences (``BudgetScorer``).
        activation_type, weight_type: "uint8" or "int8".
        format: "qdq" (QuantizeLinear/DequantizeLinear pairs) or "qoperator" (QLinearConv ...).
        percentile: the percentile for "percentile" calibration.
        max_calibration_samples: use at most this many calibration samples.
        nodes_to_exclude: node names to keep in float from the start (they read float
            inputs and weights); a name that matches no node is an error, and a name that
            pre-processing fused (``node_MatMul_1`` -> ``node_MatMul_1/MatMulAddFusion``)
            stands for the fused node.
        equalize: cross-layer equalization of Conv pairs before quantizing (Relu/ReLU6-aware,
            depthwise included; exact in float). Static mode.
        bias_correction: subtract the mean output shift that int8 weights cause, measured on
            the calibration data, from each layer's float bias, then quantize again. Static
            QDQ mode.
        smooth_quant: migrate per-channel activation outliers of LayerNorm outputs into the
            following MatMul weights (SmoothQuant). Static mode.
        smooth_quant_alpha: SmoothQuant's migration strength in [0, 1] (0.5 balances both).
        try_transforms: with a budget, try equalize, then bias correction, then SmoothQuant
            (Linear models with LayerNorm) before keeping layers in float; stops at the first
            attempt that meets the budget.
        max_float_nodes: the fallback keeps at most this many compute nodes in float (each one
            gives back int8 speed); past it the budget counts as missed (a ``qat`` step with a ``ptq``
            budget trains next).
        guard_outputs: measure every output (and each Concat slice of one) against the float
            model on the calibration samples, keep mixed-range Concats in float and keep in
            float what feeds an output whose int8 error exceeds its own variation
            (``output_guard``); off gives onnxruntime's plain result, to compare with. Unset:
            on for the edgeopt engine (the nncf engine has no guard).
        debug_layers: run the per-layer debugger (static QDQ) and name this many costliest
            layers (ranked by the share of the output error each removes when kept in float)
            in the record, on the command line and in the report; 0 turns it off. Unset: 5 for
            the edgeopt engine (the nncf engine has no debugger).
        scope: which activations become int8: "all" (every tensor the quantizer knows,
            onnxruntime's default: elementwise arithmetic, normalizations and softmax run on
            rounded values too) or "compute" (only what Conv, MatMul, Gemm and ConvTranspose read
            and write: the int8 kernels; the arithmetic between them stays float, each value
            rounded once on its way into a compute op instead of once per elementwise op). With
            a budget, "compute" is tried after "all" misses it, before transforms and float
            layers.
        engine: "edgeopt" (onnxruntime's quantizer with the options above) or "nncf" (NNCF's
            post-training quantization of the ONNX model, ``nncf.quantize``, the optional
            ``openvino`` extra): a QDQ model every runtime runs, to compare the two quantizers
            on one runtime. nncf takes ``max_calibration_samples`` (its ``subset_size``) and
            ``nodes_to_exclude`` (its ignored scope); the options only the edgeopt engine has
            (budgets, transforms, guard, debugger, other calibration settings) are refused.
    """

    mode: str = "static"
    method: str = _DEFAULT_METHOD
    per_channel: bool = True
    max_accuracy_drop: float | None = None
    min_agreement: float | None = None
    activation_type: str = "uint8"
    weight_type: str = "int8"
    format: str = "qdq"
    percentile: float = 99.999
    max_calibration_samples: int | None = 256
    nodes_to_exclude: tuple = ()
    equalize: bool = False
    bias_correction: bool = False
    smooth_quant: bool = False
    smooth_quant_alpha: float = 0.5
    try_transforms: bool = True
    max_float_nodes: int | None = None
    guard_outputs: bool | None = None
    debug_layers: int | None = None
    scope: str = "all"
    engine: str = "edgeopt"

    def validate(self):
        def one_of(name, allowed):
            v = getattr(self, name)
            if v not in allowed:
                raise InputError(f"{name} must be one of {', '.join(allowed)}; got {v!r}")

        one_of("mode", MODES)
        one_of("method", CALIBRATIONS)
        one_of("activation_type", TYPES)
        one_of("weight_type", TYPES)
        one_of("format", FORMATS)
        one_of("engine", ENGINES)
        one_of("scope", SCOPES)
        if self.engine == "nncf":
            edgeopt_only = nncf_conflicts(self)
            if edgeopt_only:
                raise InputError(f"engine nncf does not take {', '.join(edgeopt_only)} (options of the "
                                 "edgeopt engine); drop them or use engine edgeopt")
            from .quantize_nncf import require_nncf

            require_nncf()  # a recipe naming engine nncf fails when it is read, before any work
        # unset guard and debugger: on for the edgeopt engine, absent from nncf's
        edgeopt = self.engine == "edgeopt"
        if self.guard_outputs is None:
            object.__setattr__(self, "guard_outputs", edgeopt)
        if self.debug_layers is None:
            object.__setattr__(self, "debug_layers", 5 if edgeopt else 0)
        if self.max_accuracy_drop is not None and not (0 <= self.max_accuracy_drop < 1):
            raise InputError(f"max_accuracy_drop must be in [0, 1) (a fraction: 0.005 = 0.5 points); "
                             f"got {self.max_accuracy_drop!r}")
        if self.min_agreement is not None and not (0 < self.min_agreement <= 1):
            raise InputError(f"min_agreement must be in (0, 1]; got {self.min_agreement!r}")
        if not (50 < self.percentile <= 100):
            raise InputError(f"percentile must be in (50, 100]; got {self.percentile!r}")
        if self.max_calibration_samples is not None and self.max_calibration_samples < 1:
            raise InputError(f"max_calibration_samples must be >= 1; got {self.max_calibration_samples!r}")
        if not (0 <= self.smooth_quant_alpha <= 1):
            raise InputError(f"smooth_quant_alpha must be in [0, 1]; got {self.smooth_quant_alpha!r}")
        if self.max_float_nodes is not None and self.max_float_nodes < 0:
            raise InputError(f"max_float_nodes must be >= 0; got {self.max_float_nodes!r}")
        if self.debug_layers < 0:
            raise InputError(f"debug_layers must be >= 0; got {self.debug_layers!r}")
        if self.mode == "dynamic" and self.scope != "all":
            raise InputError("scope applies to static mode; dynamic mode quantizes only MatMul, Gemm "
                             "and Conv already")
        if self.mode == "dynamic" and (self.equalize or self.bias_correction or self.smooth_quant):
            raise InputError("equalize, bias_correction and smooth_quant need calibration data: "
                             "use mode='static'")
        if self.bias_correction and self.format != "qdq":
            raise InputError("bias_correction reads the QDQ model's int8 weights: use format='qdq'")
        if self.activation_type == "int8" and self.weight_type == "uint8":
            raise InputError("activation_type int8 with weight_type uint8 is not supported by "
                             "onnxruntime; use uint8 activations with int8 weights (the fast pair)")

    @property
    def has_budget(self) -> bool:
        return self.max_accuracy_drop is not None or self.min_agreement is not None

    @property
    def transforms(self) -> tuple:
        """The transforms this config switches on, in the order they are applied."""
        return tuple(t for t in TRANSFORMS if getattr(self, t))


def nncf_conflicts(config: QuantizeConfig) -> list[str]:
    """The options set in ``config`` that only the edgeopt engine has (``name=value``)."""
    defaults = {"mode": "static", "method": _DEFAULT_METHOD, "per_channel": True,
                "max_accuracy_drop": None, "min_agreement": None, "activation_type": "uint8",
                "weight_type": "int8", "format": "qdq", "percentile": 99.999, "equalize": False,
                "bias_correction": False, "smooth_quant": False, "smooth_quant_alpha": 0.5,
                "max_float_nodes": None, "guard_outputs": None, "debug_layers": None, "scope": "all"}
    # mean_minmax is NNCF's own activation estimator, so the default method is no conflict;
    # try_transforms only acts with a budget, which is refused itself
    harmless = {"guard_outputs": (None, False), "debug_layers": (None, 0)}  # off is what nncf does
    return [f"{k}={getattr(config, k)!r}" for k, v in defaults.items()
            if getattr(config, k) != v and getattr(config, k) not in harmless.get(k, ())]


def quantize(model: Any, config: QuantizeConfig | None = None, calibration: Any = None, *,
             out: str | os.PathLike | None = None, eval_data: Any = None,
             progress: Progress = None, history: Sequence[dict] | None = None,
             input_shape: Any = None) -> StepResult:
    """Quantize an ONNX model and write it to ``out`` (``.onnx`` file or artifact folder).

    The step contract (``edgeopt.core.result``): input, config, data; returns a ``StepResult``
    whose ``output`` is the written artifact (folder ``out``) or file (``.onnx`` ``out``), and
    whose ``metrics`` say what was quantized and what was kept in float.

    Args:
        model: fp32 ONNX file, artifact folder (its history is carried on), or the
            ``StepResult`` of an export.
        config: ``QuantizeConfig`` (default: static, mean_minmax, per-channel, u8 activations).
        calibration: static mode: calibration samples: an array of samples (N, ...), an iterable
            of arrays or of {input name: array} dicts, or a task split (has ``.x``).
        out: output ``.onnx`` file, or a folder for an artifact.
        eval_data: for the fallback: ``(x, y)`` (inputs and labels or targets), a split with
            ``.x``/``.y`` or a task (its ``val`` split, judged on its ``metric``) for
            ``max_accuracy_drop``; inputs alone for ``min_agreement``. Integer labels are
            judged by top-1 accuracy, other targets by mse (a task says mae or cosine). An
            object with ``.x`` and ``.output_agreement(outputs, references)`` is judged by
            that for ``min_agreement`` (``BudgetScorer``).
        progress: ``True`` or a callable: a line of text per fallback step.
        history: records to carry instead of the input's own (rarely needed).
        input_shape: concrete input shape(s) for a model with dynamic dimensions (one shape,
            ``"1,3,48,320"``, or ``{input name: shape}``): written into the graph before
            calibration, so every tensor has a static shape (the written model keeps it). Static
            mode needs it for any dynamic dimension but the batch axis.

    Raises:
        InputError: ``config`` is not a ``QuantizeConfig``, corrupt model, no quantizable op,
            empty or mismatched calibration data, a budget without evaluation data, or a budget
            that even all-float cannot meet.
    """
    from edgeopt.runtimes.artifact import model_input
    from edgeopt.runtimes.onnx_file import load_onnx, onnx_io

    config = config_argument("quantize", config, QuantizeConfig,
                             "quantize(model, QuantizeConfig(...), calibration, out=...)")
    if out is None:
        raise InputError("quantize needs out=: an .onnx file or a folder for the artifact")
    say = reporter(progress)
    model, carried, _ = model_input(model, "onnx", "quantize")
    carried = list(history) if history is not None else carried
    fp32 = load_onnx(model)
    if any(n.op_type in ("QuantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger")
           for n in fp32.graph.node):
        raise InputError(f"{str(model)!r} is already quantized (it holds int8 ops); quantize its fp32 "
                         "model instead")
    inputs, outputs = onnx_io(fp32)
    compute = [n for n in fp32.graph.node if n.op_type in COMPUTE_OPS]
    if not compute:
        ops = sorted({n.op_type for n in fp32.graph.node})
        raise InputError(f"{str(model)!r} has no quantizable op: expected at least one of "
                         f"{', '.join(COMPUTE_OPS)}, found {', '.join(ops) or 'no nodes'}")
    if config.has_budget and eval_data is None:
        raise InputError("max_accuracy_drop / min_agreement need eval_data to measure against")
    if config.max_accuracy_drop is not None and not _has_labels(eval_data):
        raise InputError("max_accuracy_drop needs labelled eval_data ((x, y) or a split with .y); "
                         "for inputs without labels use min_agreement")
    from edgeopt.compile.onnx_shapes import concrete_specs, resolve_input_shapes

    shapes = None
    if config.mode == "static" or input_shape is not None:
        # Calibrating a graph with dynamic shapes is slow and costly (onnxruntime's symbolic
        # shape inference gives up, every tensor is sized at run time): fix the shapes first.
        shapes = resolve_input_shapes(inputs, input_shape, option="--input-shape (input_shape=)")
        inputs = concrete_specs(inputs, shapes)
    feeds: list[dict] = []
    if config.mode == "static":
        feeds = calibration_feeds(calibration, inputs, config.max_calibration_samples)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.quantize-", dir=out.parent) as tmp:
        tmp = Path(tmp).resolve()  # absolute: onnxruntime's pre-processing runs inside it
        pre = tmp / "pre.onnx"
        with quiet_onnxruntime():
            from onnxruntime.quantization import quant_pre_process

            from edgeopt.compile.onnx_prepare import prepare_onnx_file

            # Third-party files: old opsets and Constant-node weights are normalised first.
            prepared = prepare_onnx_file(model, tmp / "prepared.onnx",
                                         input_shapes=shapes if input_shape is not None else None)
            if input_shape is not None:  # the written model has the shapes given: say so in its manifest
                inputs, outputs = onnx_io(load_onnx(prepared, check=False))
            # onnxruntime's symbolic shape inference saves sym_shape_infer_temp.onnx and its
            # external .data files (uuid names) in the working directory when it gives up: run
            # it in the temporary folder, which is removed
            with _working_directory(tmp):
                try:
                    quant_pre_process(str(prepared), str(pre), skip_symbolic_shape=False)
                except Exception:  # noqa: BLE001 - onnxruntime's symbolic shape inference lacks rules
                    # for some ops (a ReduceMax whose axes are an input, from AdaptiveMaxPool2d):
                    # ONNX's own shape inference is enough for quantization
                    quant_pre_process(str(prepared), str(pre), skip_symbolic_shape=True)
        prepare = _Prepared(pre, feeds, config, tmp)
        excluded = _node_names(pre, config.nodes_to_exclude, model)
        attempts, steps = [], []
        chosen, scope = config.transforms, config.scope
        if config.engine == "nncf":  # NNCF quantizes the same pre-processed model (BN folded)
            from .quantize_nncf import nncf_quantize

            candidate = nncf_quantize(pre, feeds, tmp / "nncf.onnx", ignored=excluded)
        elif config.has_budget:
            score = BudgetScorer(model, eval_data, config)
            best, met = None, False
            for transforms, scope in _ladder(config, pre):
                if transforms is None:  # another scope, with the best transforms so far
                    transforms = best[0][0]
                quantizer = prepare(transforms, scope)
                candidate = quantizer(excluded)
                s = score(candidate)
                attempts.append({"method": "ptq", "transforms": list(transforms), "scope": scope, **s})
                say(f"int8 ({'+'.join(transforms) or 'plain'}"
                    f"{'' if scope == config.scope else f', scope {scope}'}): {_describe(s)}")
                if best is None or score.objective(s) > score.objective(best[1]) + 1e-12:
                    best = ((transforms, scope), s)
                if score.meets(s):
                    chosen, met = transforms, True
                    break
            if not met:
                chosen, scope = best[0]
                quantizer = prepare(chosen, scope)
                try:
                    candidate, excluded, steps = _fallback(quantizer, score, quantizer(excluded), excluded,
                                                           config, say)
                except BudgetMissed as e:
                    last = e.steps[-1]
                    e.attempts = [*attempts, {"method": "fallback", "transforms": list(chosen), "scope": scope,
                                              "nodes_in_float": last["nodes_in_float"],
                                              **{k: v for k, v in last.items() if k in SCORE_KEYS}}]
                    raise
                attempts.append({"method": "fallback", "transforms": list(chosen), "scope": scope,
                                 "nodes_in_float": list(excluded), **{k: v for k, v in steps[-1].items()
                                                                       if k in SCORE_KEYS}})
        else:
            quantizer = prepare(chosen, scope)
            candidate = quantizer(excluded)
        guarded: dict = {}
        if config.mode == "static" and config.guard_outputs:
            # every output (and Concat slice of one) measured against float; mixed-range
            # Concats and what feeds a collapsed output kept in float (output_guard)
            candidate, excluded, guarded = guard(quantizer.pre, feeds, quantizer, excluded, say)
        debug = {}
        if (config.debug_layers and config.mode == "static" and config.format == "qdq"
                and _quantized_compute_nodes(candidate)):
            from .quant_debug import debug_summary, share_line

            say("per-layer debugger: measuring each quantized layer against the float model")
            debug = debug_summary(quantizer.pre, candidate, feeds, config.debug_layers)
            say("costliest quantized layers: " + ", ".join(debug["costliest_layers"])
                + (f" ({share_line(debug['costliest_float_share'], len(debug['costliest_layers']))})"
                   if debug["costliest_float_share"] is not None else ""))
        before, after = Path(model).stat().st_size, candidate.stat().st_size
        quantized_nodes = _quantized_compute_nodes(candidate)
        # Recurrent layers are compute too: the quantizer leaves them float, and the summary
        # must say so rather than count only the ops it can quantize.
        total = len(compute) + sum(n.op_type in RECURRENT_OPS for n in fp32.graph.node)
        float_ops = _float_compute_ops(candidate, quantized_nodes)
        record = {
            "name": "quantize",
            "config": asdict(config),
            "metrics": {
                "size_bytes_before": before, "size_bytes_after": after,
                "size_ratio": after / before,
                "calibration_samples": len(feeds),
                "compute_nodes_quantized": len(quantized_nodes),
                "compute_nodes_total": total,
                "float_ops": float_ops,
                "summary": int8_summary(len(quantized_nodes), total, float_ops),
                "engine": config.engine,
                "nodes_in_float": excluded,
                "fallback": steps,
                "transforms": list(chosen),
                "scope": scope,
                "transform_details": prepare.details.get(tuple(chosen), {}),
                "attempts": attempts,
                **guarded,
                **debug,
            },
        }
        if out.suffix == ".onnx":
            with atomic_file(out) as dst:  # the one atomic-write helper: umask permissions
                os.replace(candidate, dst)
            output: Any = out
        else:
            output = write_artifact(out, lambda d: os.replace(candidate, d / "model.onnx"),
                                    format="onnx", files=["model.onnx"], inputs=inputs,
                                    outputs=outputs, history=[*carried, record])
    return StepResult(output, record, carried)


def _node_names(pre: Path, names: Sequence[str], model: Any) -> list[str]:
    """``nodes_to_exclude`` as node names of the pre-processed model ``pre``.

    Pre-processing fuses some nodes and renames them (``node_MatMul_1`` becomes
    ``node_MatMul_1/MatMulAddFusion``): a name that starts one fused name stands for it. A name
    that matches nothing is an error rather than an exclusion that silently does nothing.
    """
    import onnx

    if not names:
        return []
    nodes = list(onnx.load(str(pre), load_external_data=False).graph.node)
    known = {n.name for n in nodes}
    out = []
    for name in names:
        fused = [k for k in known if k.startswith(f"{name}/")]
        if name in known:
            out.append(name)
        elif len(fused) == 1:
            out.append(fused[0])
        else:
            compute = [n.name for n in nodes if n.op_type in COMPUTE_OPS]
            raise InputError(
                f"nodes_to_exclude: {str(model)!r} has no node named {name!r}"
                + (f" (it is ambiguous: {', '.join(sorted(fused)[:4])})" if fused else "")
                + f"; its compute nodes are {', '.join(compute[:6])}"
                + (f" and {len(compute) - 6} more" if len(compute) > 6 else "")
                + " (the debugger's costliest_layers use these names)")
    return list(dict.fromkeys(out))


def _has_labels(data: Any) -> bool:
    if data is None:
        return False
    if hasattr(data, "metric") and hasattr(data, "val"):  # a task: its validation split is scored
        data = data.val
    if hasattr(data, "y"):
        return data.y is not None
    return isinstance(data, (tuple, list)) and len(data) == 2 and not hasattr(data[0], "keys")


# -- quantization and fallback ----------------------------------------------------------------

class _Quantizer:
    """Quantizes the pre-processed model with a given set of float nodes; calibrates once."""

    def __init__(self, pre: Path, feeds: list[dict], config: QuantizeConfig, tmp: Path):
        self.pre, self.feeds, self.config, self.tmp = pre, feeds, config, tmp
        self.cache = tmp / "calibration.json"
        self.count = 0
        self._float_model = None

    def calibrate(self) -> None:
        """Compute activation ranges once and store them where quantize_static reads them.

        Calibration is run here rather than inside ``quantize_static`` because quantize_static
        cannot pass the histogram size: its Entropy calibration then uses 128 bins for 128
        quantized levels, which can never clip, so it returned exactly the MinMax ranges
        (measured: identical scales on digits_cnn). Entropy uses 2048 bins here (TensorRT's
        setting), and asymmetric ranges for uint8 activations (they follow ReLU).
        """
        from onnxruntime.quantization import save_tensors_data
        from onnxruntime.quantization.calibrate import CalibrationMethod

        c = self.config
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile,
                  "mean_minmax": CalibrationMethod.MinMax}[c.method]
        options = {"symmetric": c.activation_type == "int8"}
        if c.method == "mean_minmax":
            # onnxruntime's MinMax "moving average" averages the per-sample minima and maxima
            # over all samples when they are collected in one pass (no max_intermediate_outputs)
            options.update(moving_average=True)
        elif c.method == "entropy":
            options.update(num_bins=2048, num_quantized_bins=128)
        elif c.method == "percentile":
            options.update(num_bins=2048, percentile=c.percentile)
        with quiet_onnxruntime():
            ranges = self._collect(method, options)
            if c.method != "minmax":
                # Histogram and averaging methods clip rare large values, which is right inside the network
                # but wrong for the graph outputs: clipped logits lose the margins that top-1 and
                # SQNR are judged on (measured on a tiny CNN: 9.8 dB with entropy-clipped logits).
                # Graph outputs and what they read as it is keep their full MinMax range: averaged,
                # nudenet's class logits topped out at 0 (every score above 0.5 read 0.5) and
                # silero-vad's speech logit at -0.29 (int8 never said speech).
                import onnx

                outputs = answer_tensors(onnx.load(str(self.pre), load_external_data=False))
                full = self._collect(CalibrationMethod.MinMax, {"symmetric": options["symmetric"]})
                for name in outputs:
                    if name in full.data and name in ranges.data:
                        ranges.data[name] = full.data[name]
            save_tensors_data(ranges, self.cache)

    def _collect(self, method, options: dict):
        from onnxruntime.quantization.calibrate import create_calibrator
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        calibrator = create_calibrator(
            self.pre, sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
            augmented_model_path=str(self.tmp / f"augmented-{method.name}.onnx"),
            calibrate_method=method, extra_options=options)
        calibrator.collect_data(CalibrationReader(self.feeds))
        return calibrator.compute_data()

    def __call__(self, exclude: Sequence[str]) -> Path:
        from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                              quantize_dynamic, quantize_static)

        c = self.config
        if c.mode == "static" and not self.cache.exists():
            self.calibrate()
        self.count += 1
        path = self.tmp / f"q{self.count}.onnx"
        qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
        with quiet_onnxruntime():
            if c.mode == "dynamic":
                quantize_dynamic(str(self.pre), str(path), per_channel=c.per_channel,
                                 weight_type=qtype[c.weight_type], nodes_to_exclude=list(exclude),
                                 op_types_to_quantize=["MatMul", "Gemm", "Conv"])
            else:
                quantize_static(
                    str(self.pre), str(path), CalibrationReader(self.feeds),
                    quant_format=QuantFormat.QDQ if c.format == "qdq" else QuantFormat.QOperator,
                    per_channel=c.per_channel, activation_type=qtype[c.activation_type],
                    weight_type=qtype[c.weight_type], nodes_to_exclude=list(exclude),
                    # None: every op onnxruntime can quantize; "compute": the int8 kernels only
                    op_types_to_quantize=list(COMPUTE_OPS) if c.scope == "compute" else None,
                    calibrate_method={"minmax": CalibrationMethod.MinMax,
                                      "entropy": CalibrationMethod.Entropy,
                                      "percentile": CalibrationMethod.Percentile,
                                      "mean_minmax": CalibrationMethod.MinMax}[c.method],
                    extra_options={"CalibPercentile": c.percentile},
                    calibration_cache_path=str(self.cache))
        if exclude and c.mode == "static" and c.format == "qdq":
            import onnx

            from .quant_debug import in_float

            # onnxruntime leaves an excluded node's weights in float but still feeds it the
            # quantized (dequantized) activation, so the activation's rounding and clipping
            # stay: measured on a ResNet, its five costliest layers excluded that way recovered
            # 0% of a 1.35-point loss. The node reads the float activation instead.
            if self._float_model is None:  # read once: the fallback quantizes once per node
                self._float_model = onnx.load(str(self.pre))
            model = in_float(onnx.load(str(path)), self._float_model, set(exclude))
            onnx.save(model, str(path))
        return path


def _ladder(config: QuantizeConfig, pre: Path) -> list[tuple]:
    """The ``(transforms, scope)`` attempts of a budget search, cheapest first: the config's own,
    then adding equalize, bias correction and (for graphs with LayerNormalization) SmoothQuant,
    then (static, scope "all") the best of those with scope "compute" (``None``: the best
    transforms so far). Rounding every elementwise op can break a model whose layers are each
    fine: PP-OCRv4's recognizer kept 31% of its decoded strings with every activation int8 and
    81% with only the compute ops' (90% with minmax calibration; benchmarks/RESULTS.md)."""
    ladder = [(t, config.scope) for t in _transform_ladder(config, pre)]
    if config.mode == "static" and config.scope == "all":
        ladder.append((None, "compute"))
    return ladder


def _transform_ladder(config: QuantizeConfig, pre: Path) -> list[tuple]:
    """The transform sets a budget search tries: the config's own, then each one added."""
    ladder = [config.transforms]
    if not config.try_transforms or config.mode != "static":
        return ladder
    import onnx

    ops = {n.op_type for n in onnx.load(str(pre), load_external_data=False).graph.node}
    wanted = set(config.transforms)
    steps = []
    if "Conv" in ops:
        steps.append("equalize")
    if config.format == "qdq":
        steps.append("bias_correction")
    if "LayerNormalization" in ops:
        steps.append("smooth_quant")
    for t in steps:
        if t not in wanted:
            wanted.add(t)
            ladder.append(tuple(x for x in TRANSFORMS if x in wanted))
    return ladder


class _Prepared:
    """One ``_Quantizer`` per transform set, built on demand and kept (each calibrates once)."""

    def __init__(self, pre: Path, feeds: list[dict], config: QuantizeConfig, tmp: Path):
        self.pre, self.feeds, self.config, self.tmp = pre, feeds, config, tmp
        self.quantizers: dict[tuple, _Quantizer] = {}
        self.details: dict[tuple, dict] = {}

    def __call__(self, transforms: tuple, scope: str | None = None) -> "_Quantizer":
        transforms = tuple(transforms)
        if scope is not None and scope != self.config.scope:
            key = (transforms, scope)
            if key not in self.quantizers:
                import shutil
                from dataclasses import replace

                base = self(transforms)
                if not base.cache.exists():
                    base.calibrate()
                folder = base.tmp / f"scope-{scope}"
                folder.mkdir()
                other = _Quantizer(base.pre, self.feeds, replace(self.config, scope=scope), folder)
                shutil.copy(base.cache, other.cache)  # the same model and data: the same ranges
                self.quantizers[key] = other
            return self.quantizers[key]
        if transforms in self.quantizers:
            return self.quantizers[transforms]
        import onnx

        from . import quant_transforms as qt
        from .quant_debug import collect

        folder = self.tmp / ("-".join(transforms) or "plain")
        folder.mkdir()
        details: dict = {}
        path = self.pre
        model = None
        samples = self.feeds[:_TRANSFORM_SAMPLES]
        if "equalize" in transforms or "smooth_quant" in transforms:
            model = onnx.load(str(path))
            if "equalize" in transforms:
                model, pairs = qt.equalize(model)
                details["equalized_pairs"] = len(pairs)
            if "smooth_quant" in transforms:
                staged = folder / "staged.onnx"
                onnx.save(model, str(staged))
                model, smoothed = qt.smooth_quant(model, collect(staged, samples, folder),
                                                  self.config.smooth_quant_alpha)
                details["smoothed_layernorms"] = len(smoothed)
            path = folder / "pre.onnx"
            onnx.save(model, str(path))
        if "bias_correction" in transforms:
            first = _Quantizer(path, self.feeds, self.config, folder)
            qdq = first([])
            q_acts = collect(qdq, samples, folder)
            corrected, names = qt.bias_correct(onnx.load(str(path)), onnx.load(str(qdq)), q_acts)
            details["bias_corrected_layers"] = len(names)
            path = folder / "pre-bias-corrected.onnx"
            onnx.save(corrected, str(path))
            sub = folder / "corrected"
            sub.mkdir()
            quantizer = _Quantizer(path, self.feeds, self.config, sub)
            # the ranges barely move with the bias; calibrating again would double the cost
            import shutil

            shutil.copy(first.cache, quantizer.cache)
        else:
            quantizer = _Quantizer(path, self.feeds, self.config, folder)
        self.quantizers[transforms] = quantizer
        self.details[transforms] = details
        return quantizer


#: Samples the transforms measure statistics on (every tensor of each sample is held).
_TRANSFORM_SAMPLES = 32


#: The keys of a score (``BudgetScorer.__call__``) that attempts and fallback steps record.
SCORE_KEYS = ("accuracy", "agreement", "accuracy_drop", "metric", "value", "fp32_value")

#: Labelled metrics the budget can be judged on (a task's ``metric``; top1 for class labels).
BUDGET_METRICS = ("top1", "mse", "mae", "cosine")


def eval_metric(eval_data: Any) -> str | None:
    """The metric ``max_accuracy_drop`` is judged on for ``eval_data``: the task's ``metric``
    when it is a task (its ``val`` split is scored), else ``top1`` for integer class labels (N,)
    and ``mse`` for targets of any other kind (float values, images); ``None`` without labels."""
    if hasattr(eval_data, "metric") and hasattr(eval_data, "val"):
        metric = eval_data.metric
        if not _has_labels(eval_data.val):
            return None
        if metric not in BUDGET_METRICS:
            raise InputError(f"an accuracy budget cannot be judged on a {metric!r} task; expected "
                             f"one of {', '.join(BUDGET_METRICS)}")
        return metric
    if not _has_labels(eval_data):
        return None
    y = np.asarray(eval_data.y if hasattr(eval_data, "y") else eval_data[1])
    return "top1" if np.issubdtype(y.dtype, np.integer) else "mse"


def _metric_value(outputs: np.ndarray, targets: np.ndarray, metric: str) -> float:
    """mse / mae / mean cosine similarity of outputs (N, ...) against targets of as many values."""
    from .fidelity import compare_outputs

    if targets.size != outputs.size or len(targets) != len(outputs):
        raise InputError(f"eval_data targets of shape {targets.shape} do not match the model's outputs "
                         f"of shape {outputs.shape}")
    return compare_outputs(outputs, targets, metric)


class BudgetScorer:
    """Scores a candidate ONNX model against the fp32 model on the evaluation data.

    Labelled data is judged by its metric (``eval_metric``). ``accuracy_drop`` is what
    ``max_accuracy_drop`` bounds: for ``top1`` (and ``cosine``) the fall in fraction points
    against fp32; for the errors ``mse`` and ``mae`` their *relative* rise over fp32's, so
    ``max_accuracy_drop=0.05`` lets int8's mse be at most 5% above fp32's whatever the scale of
    the targets (when fp32's error is 0, the error itself). Non-top-1 scores also carry
    ``metric``, ``value`` and ``fp32_value``. ``agreement`` is top-1 agreement with fp32 for class
    labels and for data without labels, and for regression / embedding targets the mean cosine
    similarity of each output to fp32's (what ``min_agreement`` bounds there). Inputs that carry
    their own judge (``eval_data.x`` and ``eval_data.output_agreement(outputs, references)``,
    each a list with one array per model output) are scored by it alone: ``agreement`` is
    what it returns (a study's task with declared outputs: the worst output's share).
    """

    def __init__(self, fp32: Path, eval_data: Any, config: QuantizeConfig):
        from edgeopt.runtimes.onnxruntime_runner import OnnxRuntimeRunner

        from .fidelity import runner_all_outputs, runner_outputs

        # inputs whose outputs the caller judges itself (a study passes the task's declared
        # output kinds: a sequence output is judged by identical decoded sequences, which
        # top-1 over the flattened tensor or cosine cannot see)
        self.judge = getattr(eval_data, "output_agreement", None)
        self.metric = None if self.judge is not None else eval_metric(eval_data)
        if hasattr(eval_data, "metric") and hasattr(eval_data, "val"):
            eval_data = eval_data.val
        if self.judge is not None:
            x, y = eval_data.x, None
        elif hasattr(eval_data, "x"):
            x, y = eval_data.x, getattr(eval_data, "y", None)
        elif isinstance(eval_data, tuple) and len(eval_data) == 2:
            x, y = eval_data
        else:
            x, y = np.asarray(eval_data), None
        if len(x) == 0:
            raise InputError("eval_data is empty: expected at least one sample")
        if config.max_accuracy_drop is not None and y is None:
            raise InputError("max_accuracy_drop needs labelled eval_data: (inputs, labels)")
        self.x, self.config = x, config
        self.y = None if y is None else np.asarray(y)
        self._outputs = runner_all_outputs if self.judge is not None else runner_outputs
        self.ref = self._outputs(OnnxRuntimeRunner(fp32), x)
        # without labels nothing says the outputs are not class scores: top-1 agreement, as ever
        self.top1 = self.metric in (None, "top1")
        self.fp32_value = self._value(self.ref)

    def _value(self, outputs: np.ndarray) -> float | None:
        if self.y is None:
            return None
        if self.metric == "top1":
            pred = _top1(outputs)
            if self.y.size != len(pred):
                raise InputError(f"eval_data has labels of shape {self.y.shape} for {len(pred)} samples; "
                                 "expected one class index per sample")
            return float(np.mean(pred == self.y.reshape(len(pred))))
        return _metric_value(outputs, self.y, self.metric)

    def __call__(self, path: Path) -> dict:
        from edgeopt.runtimes.onnxruntime_runner import OnnxRuntimeRunner

        outputs = self._outputs(OnnxRuntimeRunner(path), self.x)
        if self.judge is not None:
            return {"agreement": float(self.judge(outputs, self.ref))}
        if self.top1:
            out = {"agreement": float(np.mean(_top1(outputs) == _top1(self.ref)))}
        else:
            out = {"agreement": _metric_value(outputs, self.ref, "cosine")}
        if self.y is None:
            return out
        value, fp32 = self._value(outputs), self.fp32_value
        if self.metric == "top1":
            out["accuracy"] = value
            out["accuracy_drop"] = fp32 - value
        else:
            higher = self.metric == "cosine"
            drop = fp32 - value if higher else (value - fp32) / fp32 if fp32 > 0 else value
            out.update(metric=self.metric, value=value, fp32_value=fp32, accuracy_drop=drop)
        return out

    def meets(self, s: dict) -> bool:
        c = self.config
        if c.max_accuracy_drop is not None and s["accuracy_drop"] > c.max_accuracy_drop + 1e-12:
            return False
        if c.min_agreement is not None and s["agreement"] < c.min_agreement - 1e-12:
            return False
        return True

    def objective(self, s: dict) -> float:
        """Higher is better: minus the drop (top-1: accuracy less a constant), else agreement."""
        return -s["accuracy_drop"] if self.config.max_accuracy_drop is not None else s["agreement"]


def _top1(logits: np.ndarray) -> np.ndarray:
    return logits.reshape(len(logits), -1).argmax(axis=1)


def _fallback(quantize_with: _Quantizer, score: BudgetScorer, candidate: Path, excluded: list,
              config: QuantizeConfig, say: Callable[[str], None]):
    first = score(candidate)
    steps = [{"nodes_in_float": list(excluded), **first}]
    say(f"int8: {_describe(first)}")
    if score.meets(first):
        return candidate, excluded, steps
    nodes = [n for n in _quantized_compute_nodes(candidate) if n not in excluded]
    say(f"budget missed; measuring the sensitivity of {len(nodes)} quantized compute nodes")
    base = score.objective(first)
    gains = []
    for name in nodes:
        s = score(quantize_with([*excluded, name]))
        gains.append((score.objective(s) - base, name))
    gains.sort(key=lambda g: -g[0])
    if config.max_float_nodes is not None:
        gains = gains[:max(config.max_float_nodes - len(excluded), 0)]
    for gain, name in gains:
        excluded = [*excluded, name]
        candidate = quantize_with(excluded)
        s = score(candidate)
        steps.append({"nodes_in_float": list(excluded), "sensitivity": gain, **s})
        say(f"kept {name} in float (sensitivity {gain:+.4f}): {_describe(s)}")
        if score.meets(s):
            return candidate, excluded, steps
    raise BudgetMissed(
        f"no assignment meets the budget (max_accuracy_drop={config.max_accuracy_drop}, "
        f"min_agreement={config.min_agreement}): with {len(excluded)} compute nodes in float "
        f"the model scores {_describe(steps[-1])}", steps)


class BudgetMissed(InputError):
    """No post-training attempt met the accuracy budget (``steps``: the fallback's records)."""

    def __init__(self, message: str, steps: list):
        super().__init__(message)
        self.steps = steps
        self.attempts: list = []  # every attempt of ``quantize`` (set on the way out)


def _describe(s: dict) -> str:
    if "metric" in s:  # regression / embedding outputs: the metric, and cosine to fp32
        m = s["metric"]
        change = (f"drop {s['accuracy_drop']:.4g}" if m == "cosine"
                  else f"{s['accuracy_drop'] * 100:+.2f}% against fp32's {s['fp32_value']:.4g}")
        return f"{m} {s['value']:.4g} ({change}), cosine to fp32 {s['agreement']:.4f}"
    parts = [f"agreement {s['agreement'] * 100:.2f}%"]
    if "accuracy" in s:
        parts.insert(0, f"accuracy {s['accuracy'] * 100:.2f}% (drop {s['accuracy_drop'] * 100:.2f} points)")
    return ", ".join(parts)


def int8_summary(quantized: int, total: int, float_ops: dict) -> str:
    """``"3/4 compute nodes int8; float: GRU (1)"``: what ran int8 and, by op, what stayed float."""
    left = "; float: " + ", ".join(f"{op} ({n})" for op, n in float_ops.items()) if float_ops else ""
    return f"{quantized}/{total} compute nodes int8{left}"


def _float_compute_ops(path: Path, quantized: Sequence[str]) -> dict:
    """``{op type: count}`` of the compute nodes of the quantized model at ``path`` that run in
    float: not in ``quantized`` (kept in float, or ops the quantizer has no int8 kernel for,
    such as LSTM / GRU / RNN)."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    done = set(quantized)
    counts: dict = {}
    for n in g.node:
        if n.op_type in (*COMPUTE_OPS, *RECURRENT_OPS) and n.name not in done:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items()))


def _quantized_compute_nodes(path: Path) -> list[str]:
    """Names of compute nodes that run on quantized inputs (QDQ: a DequantizeLinear feeds them;
    QOperator: QLinear*/ConvInteger/MatMulInteger nodes)."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    produced_by = {o: n for n in g.node for o in n.output}
    names = []
    for n in g.node:
        if n.op_type in COMPUTE_OPS:
            src = produced_by.get(n.input[0])
            if src is not None and src.op_type == "DequantizeLinear":
                names.append(n.name)
        elif n.op_type in ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"):
            names.append(n.name)
    return names


@contextlib.contextmanager
def _working_directory(path: Path):
    """Run a block in ``path`` (libraries that write next to the caller write there)."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def describe(metrics: dict, config: dict) -> list[str]:
    """What a quantize record changed, as the report says it (nodes quantized, kept in float).

    >>> describe({"compute_nodes_quantized": 3, "compute_nodes_total": 4, "nodes_in_float": []}, {})
    ['3 of 4 compute nodes quantized', 'kept in float: none']
    """
    m, parts = metrics, []
    if m.get("engine") == "nncf":  # which quantizer made it: the two are compared side by side
        parts.append("quantized by NNCF")
    if "compute_nodes_total" in m:
        parts.append(f"{m.get('compute_nodes_quantized')} of {m['compute_nodes_total']} compute nodes quantized"
                     + (" (float: " + ", ".join(f"{op} {n}" for op, n in m["float_ops"].items()) + ")"
                        if m.get("float_ops") else ""))
    if m.get("scope") == "compute":
        parts.append("int8 only where compute ops read and write (elementwise ops in float)")
    if "nodes_in_float" in m:
        kept = list(m["nodes_in_float"] or [])
        parts.append("kept in float: " + (listing(kept) if kept else "none"))
    if m.get("costliest_layers"):
        share = m.get("costliest_float_share")
        parts.append("costliest layers (debugger): " + listing(list(m["costliest_layers"]))
                     + (f" (in float together they remove {share * 100:.0f}% of the output error)"
                        if share is not None else ""))
    return parts
