"""Quantization-aware training: fine-tune with fake int8, export QDQ ONNX with the learned scales.

The model's BatchNorms are folded into their convolutions first (``torch.fx``'s conv-BN fusion),
so the weights trained under fake quantization are the weights that ship. Every Conv2d and
Linear then quantizes its weights (int8, symmetric, per output channel) and its input (uint8,
asymmetric, per tensor) in the forward pass; the scales are learned with LSQ (Esser et al. 2020;
LSQ+ for the activation offset): rounding passes gradients straight through, and the scale gets
the LSQ gradient, scaled by ``1 / sqrt(numel * qmax)``. Ranges start from the min/max of the
calibration samples. With ``teacher=``, the loss mixes the labels with the fp32 teacher's soft
targets (temperature ``T``, weight ``alpha``), which recovers more than labels alone on small
training sets.

Export: the fine-tuned float weights are exported (parity-checked), onnxruntime builds the QDQ
graph (the same graph ``quantize`` writes, so onnxruntime's int8 kernels and the TVM int8 rewrite
both run it), and then every layer trained under fake quantization gets its learned input
scale/zero point and its int8 weights and scales, with the int32 bias re-quantized to match:
the artifact computes what training simulated, without re-calibrating those layers. Tensors the
fake quantization does not model (outputs of residual Adds and Concats, graph outputs) get
MinMax ranges from the calibration samples run through the fine-tuned model.

Example:
    >>> import numpy as np, torch  # doctest: +SKIP
    >>> import edgeopt.compress as ec  # doctest: +SKIP
    >>> from edgeopt.pipeline.tasks import load_task  # doctest: +SKIP
    >>> from edgeopt.pipeline.zoo import create  # doctest: +SKIP
    >>> task = load_task("digits")  # doctest: +SKIP
    >>> r = ec.qat(create("digits_cnn"), ec.QATConfig(epochs=1), task, out="build/qat")  # doctest: +SKIP
    >>> r.metrics["layers_learned"] > 0  # doctest: +SKIP
    True
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import tempfile
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeopt.core.config import StepConfig, config_argument
from edgeopt.core.errors import InputError
from edgeopt.core.phrases import listing, said
from edgeopt.core.result import Progress, StepResult, reporter, unwrap

if TYPE_CHECKING:
    from .quantize import QuantizeConfig


@dataclass(frozen=True)
class QATConfig(StepConfig):
    """How to fine-tune under fake quantization (see the module docstring).

    Args:
        epochs: passes over the training data.
        lr: AdamW learning rate of the weights and the quantization scales.
        batch_size: training batch size.
        alpha: weight of the teacher's soft targets in the loss (used with ``teacher=``;
            0 trains on the labels alone).
        temperature: softmax temperature of the soft targets.
        per_channel: per-output-channel weight scales (as ``quantize``'s default).
        calibration_samples: samples that initialize the ranges (and calibrate the tensors
            fake quantization does not model).
        max_train_samples: use at most this many training samples per epoch (all when unset).
        seed: seed of the data order.
        ptq: the accuracy ladder's last rung: a ``QuantizeConfig`` with ``max_accuracy_drop`` or
            ``min_agreement`` (recipe keys and flags ``ptq_<field>``: ``ptq_min_agreement``,
            ``--ptq-method``). Post-training quantization with it runs first (plain, the
            transforms, the per-layer fallback); its model is the result when it meets the
            budget, and QAT runs only when it misses. None: QAT alone.
    """

    epochs: int = 2
    lr: float = 1e-4
    batch_size: int = 64
    alpha: float = 0.5
    temperature: float = 2.0
    per_channel: bool = True
    calibration_samples: int = 256
    max_train_samples: int | None = None
    seed: int = 0
    ptq: QuantizeConfig | None = field(default=None, metadata={"nested": "edgeopt.compress.quantize:QuantizeConfig"})

    def validate(self):
        from .quantize import QuantizeConfig

        if self.ptq is not None and not (isinstance(self.ptq, QuantizeConfig) and self.ptq.has_budget):
            raise InputError("ptq needs its budget, ptq_max_accuracy_drop or ptq_min_agreement (--ptq-max-accuracy-drop, "
                             "--ptq-min-agreement): it decides whether QAT runs")
        for name in ("epochs", "batch_size", "calibration_samples"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1; got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise InputError(f"lr must be > 0; got {self.lr!r}")
        if not 0 <= self.alpha <= 1:
            raise InputError(f"alpha must be in [0, 1]; got {self.alpha!r}")
        if not self.temperature > 0:
            raise InputError(f"temperature must be > 0; got {self.temperature!r}")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise InputError(f"max_train_samples must be >= 1; got {self.max_train_samples!r}")


# -- fake quantization ------------------------------------------------------------------------

def _round_ste(x):
    return (x.round() - x).detach() + x


def _grad_scale(s, g: float):
    return (s - s * g).detach() + s * g


def _fake_quant_modules():
    import torch
    from torch import nn

    class ActQuant(nn.Module):
        """uint8 asymmetric per-tensor fake quantization with learned scale and zero point."""

        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(1.0))
            self.zero_point = nn.Parameter(torch.tensor(0.0))
            self.observing = False
            self.lo, self.hi = math.inf, -math.inf

        def start(self, lo: float, hi: float) -> None:
            lo, hi = min(lo, 0.0), max(hi, 0.0)
            scale = max((hi - lo) / 255.0, 1e-8)
            with torch.no_grad():
                self.scale.fill_(scale)
                self.zero_point.fill_(min(max(round(-lo / scale), 0), 255))

        def forward(self, x):
            if self.observing:
                self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
                return x
            s = _grad_scale(self.scale.abs() + 1e-8, 1.0 / math.sqrt(x.numel() * 255.0))
            z = torch.clamp(_round_ste(self.zero_point), 0, 255)
            q = torch.clamp(_round_ste(x / s) + z, 0, 255)
            return (q - z) * s

        def qparams(self) -> tuple[float, int]:
            return float(self.scale.detach().abs()) + 1e-8, int(min(max(round(float(self.zero_point.detach())), 0), 255))

    class WeightQuant(nn.Module):
        """int8 symmetric fake quantization ([-127, 127]) with learned per-channel scales."""

        def __init__(self, weight, per_channel: bool):
            super().__init__()
            w = weight.detach()
            m = w.abs().reshape(w.shape[0], -1).amax(1) if per_channel else w.abs().amax().reshape(1)
            self.scale = nn.Parameter(torch.clamp(m / 127.0, min=1e-8))

        def forward(self, w):
            shape = (-1,) + (1,) * (w.dim() - 1)
            s = _grad_scale(self.scale.abs() + 1e-10, 1.0 / math.sqrt(w[0].numel() * 127.0)).reshape(shape)
            return torch.clamp(_round_ste(w / s), -127, 127) * s

        def scales(self) -> np.ndarray:
            return (self.scale.detach().abs() + 1e-10).numpy().astype(np.float32)

    class QuantLayer(nn.Module):
        """A Conv2d or Linear with fake-quantized input and weights."""

        def __init__(self, layer, per_channel: bool):
            super().__init__()
            self.layer = layer
            self.act = ActQuant()
            self.weight_quant = WeightQuant(layer.weight, per_channel)

        def forward(self, x):
            w = self.weight_quant(self.layer.weight)
            x = self.act(x)
            if isinstance(self.layer, nn.Linear):
                return nn.functional.linear(x, w, self.layer.bias)
            return self.layer._conv_forward(x, w, self.layer.bias)

    return ActQuant, WeightQuant, QuantLayer


def _fold_batchnorm(model):
    """BN folded into the preceding conv (fx conv-BN fusion); the model itself when it has no
    BatchNorm. A model with BatchNorm that fx cannot trace keeps it frozen (eval statistics):
    its convs then ship BN-folded weights whose scales come from calibration, not training."""
    from torch import nn

    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model, True
    try:
        from torch.fx.experimental.optimization import fuse

        fused = fuse(copy.deepcopy(model).eval())
    except Exception:  # noqa: BLE001 - any fx tracing failure: keep BN, say so in the record
        return model, False
    return fused, not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())


def _wrap(model, per_channel: bool):
    from torch import nn

    _, _, QuantLayer = _fake_quant_modules()
    wrapped = {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, (nn.Conv2d, nn.Linear)) and not isinstance(child, QuantLayer):
                q = QuantLayer(child, per_channel)
                setattr(module, child_name, q)
                wrapped[f"{name}.{child_name}" if name else child_name] = q
    return wrapped


def _unwrap(model):
    """A copy with every QuantLayer replaced by its (fine-tuned) float layer."""
    _, _, QuantLayer = _fake_quant_modules()
    plain = copy.deepcopy(model)
    for name, module in list(plain.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child).__name__ == "QuantLayer":
                setattr(module, child_name, child.layer)
    return plain


# -- data -------------------------------------------------------------------------------------

def _arrays(data: Any) -> tuple[np.ndarray, np.ndarray, Any]:
    """``(x, y, val)`` from a task (``.train``/``.val``), a split (``.x``/``.y``) or ``(x, y)``."""
    val = getattr(data, "val", None)
    if hasattr(data, "train"):
        data = data.train
    if hasattr(data, "x"):
        x, y = data.x, getattr(data, "y", None)
    elif isinstance(data, tuple) and len(data) == 2:
        x, y = data
    else:
        raise InputError("qat needs labelled training data: a task, a split with .x/.y, or (x, y) arrays")
    if y is None:
        raise InputError("qat needs labelled training data; this data has no labels")
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
    if len(x) == 0 or len(x) != len(y):
        raise InputError(f"qat training data needs as many labels as inputs (at least one); got "
                         f"{len(x)} inputs and {len(y)} labels")
    return x, y, val


def _weight_key(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a, np.float32).tobytes()).hexdigest()


# -- the step ---------------------------------------------------------------------------------

def qat(model, config: QATConfig | None = None, data: Any = None, *, teacher=None,
        calibration: Any = None, out: str | os.PathLike | None = None, example_inputs: Any = None,
        progress: Progress = None) -> StepResult:
    """Fine-tune ``model`` with fake int8 quantization and write QDQ ONNX with the learned scales.

    The step contract: input, config, data; returns a ``StepResult`` whose ``output`` is the
    written artifact (folder ``out``) or file (``.onnx`` ``out``).

    With ``config.ptq`` this is the accuracy-aware int8 flow, cheapest method first: the
    exported model is quantized post-training first and that model is the result when it meets
    the budget (a ``quantize`` record, ``budget_met`` true); otherwise QAT runs and its record's
    ``metrics["attempts"]`` lists every attempt with its accuracy, ``budget_met`` whether QAT's
    model met the budget.

    Args:
        model: a ``torch.nn.Module`` (or a torch-level step's ``StepResult``); not modified.
        config: ``QATConfig``.
        data: labelled training data: a task (``.train``, and ``.val`` for the record), a split
            with ``.x``/``.y``, or ``(x, y)`` arrays; inputs are batches of the model's input.
        teacher: the fp32 model whose soft targets join the labels (``alpha``).
        calibration: samples that initialize ranges; default the first training samples.
        out: output ``.onnx`` file or artifact folder (required).
        example_inputs: the export's example input; default one training sample.
        progress: ``True`` or a callable: a line per epoch.

    Raises:
        InputError: no ``out``, data without labels, or a model without Conv2d/Linear layers.
    """
    import torch

    config = config_argument("qat", config, QATConfig, "qat(model, QATConfig(...), data, out=...)")
    if out is None:
        raise InputError("qat needs out=: an .onnx file or a folder for the artifact")
    say = reporter(progress)
    module, carried = unwrap(model)
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"qat fine-tunes a torch module; got {type(module).__name__}")
    x, y, val = _arrays(data)
    calib = np.asarray(calibration.x if hasattr(calibration, "x") else calibration, np.float32) \
        if calibration is not None else x[:config.calibration_samples]
    calib = calib[:config.calibration_samples]
    example = x[:1] if example_inputs is None else np.asarray(example_inputs, np.float32)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:  # the fp32 model a budget is judged on lives until QAT's is scored
        budget = None
        if config.ptq is not None:
            ptq, budget = _ptq_first(model, config.ptq, data, x, y, calib if calibration is None else calibration,
                                     example, out, stack, progress)
            if ptq is not None:
                return ptq
        return _qat(module, carried, config, x, y, val, calib, example, teacher, budget, out, say)


def _ptq_first(model, config, data, x, y, calibration, example, out: Path, stack: ExitStack, progress):
    """The ladder's rungs before QAT: ``quantize`` with its budget on the exported fp32 model.
    Returns ``(its result, None)`` when it meets the budget, else ``(None, (scorer, attempts))``
    to score QAT's model with, whose record then lists every attempt."""
    from edgeopt.compile import ExportConfig, export

    from .quantize import BudgetMissed, BudgetScorer, quantize

    # the budget is judged on the validation split (by a task's own metric), on the training data
    # when there is none
    val = getattr(data, "val", None)
    eval_data = data if hasattr(data, "metric") and val is not None else (
        val if getattr(val, "y", None) is not None else (x, y))
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f".{out.name}.ptq-", dir=out.parent)))
    fp32 = export(model, ExportConfig(), example, out=tmp / "fp32")
    try:
        r = quantize(fp32, config, calibration, out=out, eval_data=eval_data, progress=progress)
    except BudgetMissed as e:
        reporter(progress)("qat: post-training quantization missed its budget; quantization-aware training next")
        return None, (BudgetScorer(fp32.path, eval_data, config), list(e.attempts))
    r.record["metrics"]["budget_met"] = True
    return r, None


def _qat(module, carried, config: QATConfig, x, y, val, calib, example, teacher, budget, out: Path, say):
    import torch

    from edgeopt.compile import ExportConfig, export
    from edgeopt.runtimes.artifact import write_artifact

    torch.manual_seed(config.seed)
    student, folded = _fold_batchnorm(copy.deepcopy(module).eval())
    wrapped = _wrap(student, config.per_channel)
    if not wrapped:
        raise InputError("qat found no Conv2d or Linear layer to quantize")
    _observe(student, wrapped, calib)
    loss = _train(student, teacher, x, y, config, say)
    student.eval()
    record = {"name": "qat", "config": asdict(config), "metrics": {
        "epochs": config.epochs, "final_loss": loss, "layers_learned": len(wrapped),
        "batchnorm_folded": folded, "teacher": teacher is not None}}
    if val is not None and getattr(val, "y", None) is not None:
        from edgeopt.runtimes.torch_runner import torch_outputs

        record["metrics"]["fake_quant_val_accuracy"] = float(
            np.mean(torch_outputs(student, val.x)[0].argmax(1) == val.y))

    with tempfile.TemporaryDirectory(prefix=f".{out.name}.qat-", dir=out.parent) as tmp:
        tmp = Path(tmp)
        plain = _unwrap(student)
        fp32 = export(plain, ExportConfig(), example, out=tmp / "fp32.onnx").path
        candidate, learned, calibrated = _export_qdq(fp32, wrapped, calib, config, tmp)
        record["metrics"].update(layers_with_learned_scales=learned, layers_calibrated=calibrated)
        if val is not None and getattr(val, "y", None) is not None:
            from edgeopt.runtimes.onnxruntime_runner import OnnxRuntimeRunner

            from .fidelity import runner_outputs

            pred = runner_outputs(OnnxRuntimeRunner(candidate), val.x).reshape(len(val.x), -1).argmax(1)
            record["metrics"]["int8_val_accuracy"] = float(np.mean(pred == val.y))
        if budget is not None:  # after post-training quantization missed: every attempt, in order
            score, attempts = budget
            s = score(candidate)
            record["metrics"].update(attempts=[*attempts, {"method": "qat", "transforms": [], **s}],
                                     budget_met=score.meets(s))
        say(f"qat: {learned} layers carry learned scales, {len(calibrated)} calibrated"
            + (f"; int8 validation accuracy {record['metrics']['int8_val_accuracy'] * 100:.2f}%"
               if "int8_val_accuracy" in record["metrics"] else ""))
        from edgeopt.core.files import file_mode
        from edgeopt.runtimes.onnx_file import load_onnx, onnx_io

        if out.suffix == ".onnx":
            os.chmod(candidate, file_mode())
            os.replace(candidate, out)
            output: Any = out
        else:
            inputs, outputs = onnx_io(load_onnx(candidate))
            output = write_artifact(out, lambda d: os.replace(candidate, d / "model.onnx"),
                                    format="onnx", files=["model.onnx"], inputs=inputs,
                                    outputs=outputs, history=[*carried, record])
    return StepResult(output, record, carried)


def _observe(student, wrapped: dict, calib: np.ndarray) -> None:
    """Initialize every activation range from the calibration samples' min/max."""
    import torch

    for q in wrapped.values():
        q.act.observing = True
    with torch.no_grad():
        for s in range(0, len(calib), 64):
            student(torch.from_numpy(calib[s:s + 64]))
    for q in wrapped.values():
        q.act.observing = False
        if q.act.lo <= q.act.hi:
            q.act.start(q.act.lo, q.act.hi)


def _train(student, teacher, x, y, config: QATConfig, say) -> float:
    import torch
    import torch.nn.functional as F

    from torch.nn.modules.batchnorm import _BatchNorm

    gen = torch.Generator().manual_seed(config.seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    n = len(yt) if config.max_train_samples is None else min(len(yt), config.max_train_samples)
    opt = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=0.0)
    steps = config.epochs * ((n + config.batch_size - 1) // config.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    if teacher is not None:
        teacher = teacher.eval()
    last = math.nan
    for epoch in range(config.epochs):
        student.train()
        for m in student.modules():  # BN that could not be folded keeps its statistics
            if isinstance(m, _BatchNorm):
                m.eval()
        order = torch.randperm(len(yt), generator=gen)[:n]
        total, count = 0.0, 0
        for s in range(0, n, config.batch_size):
            i = order[s:s + config.batch_size]
            logits = student(xt[i])
            loss = F.cross_entropy(logits, yt[i])
            if teacher is not None and config.alpha > 0:
                with torch.no_grad():
                    soft = F.softmax(teacher(xt[i]) / config.temperature, dim=1)
                kd = F.kl_div(F.log_softmax(logits / config.temperature, dim=1), soft,
                              reduction="batchmean") * config.temperature ** 2
                loss = (1 - config.alpha) * loss + config.alpha * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, count = total + loss.item() * len(i), count + len(i)
        last = total / max(count, 1)
        say(f"qat epoch {epoch + 1}/{config.epochs}: loss {last:.4f}")
    return last


def _export_qdq(fp32: Path, wrapped: dict, calib: np.ndarray, config: QATConfig,
                tmp: Path) -> tuple[Path, int, list[str]]:
    """QDQ model of ``fp32`` with the learned scales; returns (path, layers learned, the compute
    nodes whose scales came from calibration instead)."""
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static, save_tensors_data)
    from onnxruntime.quantization.calibrate import TensorData, create_calibrator
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    from .calibration import CalibrationReader, quiet_onnxruntime

    pre = tmp / "pre.onnx"
    with quiet_onnxruntime():
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=False)
    model = onnx.load(str(pre))
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    # torch weight (or its transpose, as MatMul stores it) -> its QuantLayer: names do not survive
    # export and pre-processing reliably, values do
    by_value = {}
    for q in wrapped.values():
        w = q.layer.weight.detach().numpy()
        by_value[_weight_key(w)] = (q, False)
        if w.ndim == 2:
            by_value[_weight_key(w.T)] = (q, True)
    matched, calibrated = {}, []
    for n in g.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2:
            continue
        hit = by_value.get(_weight_key(inits[n.input[1]])) if n.input[1] in inits else None
        if hit is None:
            calibrated.append(n.name)
        else:
            matched[n.name] = (n, *hit)
    feeds = [{g.input[0].name: calib[i:i + 1]} for i in range(len(calib))]
    cache = tmp / "ranges.json"
    with quiet_onnxruntime():
        calibrator = create_calibrator(pre, sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
                                       augmented_model_path=str(tmp / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.MinMax,
                                       extra_options={"symmetric": False})
        calibrator.collect_data(CalibrationReader(feeds))
        ranges = calibrator.compute_data()
        for n, q, _ in matched.values():
            s, z = q.act.qparams()
            ranges.data[n.input[0]] = TensorData(lowest=np.array(-z * s, np.float32),
                                                 highest=np.array((255 - z) * s, np.float32))
        save_tensors_data(ranges, cache)
        qdq = tmp / "qdq.onnx"
        quantize_static(str(pre), str(qdq), CalibrationReader(feeds), quant_format=QuantFormat.QDQ,
                        per_channel=config.per_channel, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        calibration_cache_path=str(cache))
    _learned_weights(qdq, matched, inits)
    return qdq, len(matched), calibrated


def _learned_weights(qdq: Path, matched: dict, float_inits: dict) -> None:
    """Put each trained layer's int8 weights, weight scales and int32 bias into the QDQ model."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(qdq))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    produced = {o: n for n in g.node for o in n.output}

    def set_init(name, value):
        inits[name].CopyFrom(numpy_helper.from_array(value, name))

    for n in g.node:
        if n.name not in matched:
            continue
        _, q, transposed = matched[n.name]
        wdq = produced.get(n.input[1])
        xdq = produced.get(n.input[0])
        if wdq is None or wdq.op_type != "DequantizeLinear" or wdq.input[0] not in inits:
            continue
        w = q.layer.weight.detach().numpy().astype(np.float64)
        s = q.weight_quant.scales().astype(np.float64)
        wi = np.clip(np.round(w / s.reshape((-1,) + (1,) * (w.ndim - 1))), -127, 127).astype(np.int8)
        stored_scale = numpy_helper.to_array(inits[wdq.input[1]])
        if stored_scale.size != s.size:
            continue  # per-tensor / per-channel mismatch: keep onnxruntime's scales
        set_init(wdq.input[0], wi.T.copy() if transposed else wi)
        set_init(wdq.input[1], s.astype(np.float32).reshape(stored_scale.shape))
        if len(wdq.input) > 2 and wdq.input[2] in inits:
            set_init(wdq.input[2], np.zeros(stored_scale.shape, np.int8))
        if len(n.input) > 2 and n.input[2] in produced and xdq is not None:
            bdq = produced[n.input[2]]
            if bdq.op_type == "DequantizeLinear" and bdq.input[0] in inits and q.layer.bias is not None:
                xs = float(numpy_helper.to_array(inits[xdq.input[1]]))
                bscale = (xs * s).astype(np.float32)
                b = q.layer.bias.detach().numpy().astype(np.float64)
                set_init(bdq.input[0], np.round(b / bscale).astype(np.int32))
                set_init(bdq.input[1], bscale.reshape(numpy_helper.to_array(inits[bdq.input[1]]).shape))
    onnx.save(model, str(qdq))


def describe(metrics: dict, config: dict) -> list[str]:
    """What a qat record changed, as the report says it (layers with learned scales, accuracy).

    >>> describe({"layers_with_learned_scales": 5, "int8_val_accuracy": 0.97, "layers_calibrated": []}, {})
    ['5 layers with learned int8 scales', 'int8 val accuracy 97.00%']
    """
    return said(metrics, ("layers_with_learned_scales", "{} layers with learned int8 scales"),
                ("int8_val_accuracy", lambda a: f"int8 val accuracy {a * 100:.2f}%"),
                ("layers_calibrated", lambda names: names and "calibrated instead: " + listing(list(names))))
