"""Measure one artifact on one runtime into one report entry: the only place entries are built.

Latency (warm-up, then timed runs in their own block: never interleaved with another backend,
whose idle threads would slow it), the size of the artifact the runtime loads, params, FLOPs,
the task's metric on its test split, top-1 agreement with the fp32 model's predictions, and every
output against fp32's same output by what it is (``output_quality``, ``worst_output``); with
an ``Evaluation`` (``edgeopt.pipeline.evaluate``), per-class accuracy, slices, calibration,
robustness and the compression-identified exemplars too.

Example:
    >>> from edgeopt.pipeline.measure import BenchConfig
    >>> BenchConfig(warmup=2, repeat=5).repeat
    5
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from edgeopt.core.config import StepConfig
from edgeopt.core.errors import InputError, first_line


@dataclass(frozen=True)
class BenchConfig(StepConfig):
    """Timing settings: untimed warm-up runs, timed runs, worker threads per backend."""

    warmup: int = 10
    repeat: int = 100
    threads: int | None = None

    def validate(self):
        if self.warmup < 0:
            raise InputError(f"warmup must be an integer >= 0, got {self.warmup!r}")
        if self.repeat < 1:
            raise InputError(f"repeat must be an integer >= 1, got {self.repeat!r}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"threads must be an integer >= 1, got {self.threads!r}")

    @property
    def resolved_threads(self) -> int:
        return self.threads or os.cpu_count() or 1


def save_torch_artifact(model, example: np.ndarray, out, history: Sequence[dict] = ()):
    """Save ``model`` as a ``torch.export`` program (``model.pt2``) in an artifact folder."""
    import torch

    from edgeopt.core.tensors import TensorSpec
    from edgeopt.runtimes.artifact import write_artifact
    from torch.utils._pytree import tree_leaves

    x = torch.from_numpy(example)
    model = model.eval()
    program = torch.export.export(model, (x,))
    with torch.inference_mode():
        outs = tree_leaves(model(x))
    inputs = [TensorSpec("input", list(x.shape), str(x.dtype).replace("torch.", ""))]
    outputs = [TensorSpec(f"output{i}" if i else "output", list(o.shape),
                          str(o.dtype).replace("torch.", "")) for i, o in enumerate(outs)]
    return write_artifact(out, lambda d: torch.export.save(program, str(d / "model.pt2")),
                          format="torch", files=["model.pt2"], inputs=inputs, outputs=outputs,
                          history=history)


def onnx_params(path) -> int:
    """Parameters of an ONNX model: the elements of its float initializers (weights, biases)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return sum(int(numpy_helper.to_array(t).size) for t in model.graph.initializer
               if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE))


def predictions_digest(preds: np.ndarray) -> str:
    """A short hash of a prediction vector: equal digests mean identical predictions."""
    return hashlib.sha256(np.ascontiguousarray(preds, dtype=np.int64).tobytes()).hexdigest()[:16]


def step_changes(history: Sequence[dict]) -> list[dict]:
    """What each step changed, for the report: its name and its scalar metrics."""
    out = []
    for record in history:
        metrics = {k: v for k, v in (record.get("metrics") or {}).items()
                   if isinstance(v, (int, float, str, bool)) or v is None
                   or (isinstance(v, list) and len(v) <= 16 and all(isinstance(i, (int, float, str)) for i in v))}
        out.append({"name": record.get("name"), "metrics": metrics})
    return out


def collect_outputs(run_all, x: np.ndarray | dict) -> list[np.ndarray]:
    """Every output (N, ...) of a batch-1 callable returning a list of arrays (``runner.run``),
    fed each sample of ``x`` (an array, or per-input arrays: ``task_types.sample``)."""
    from .task_types import count, sample

    parts: list[list[np.ndarray]] = []
    for i in range(count(x)):
        outs = run_all(sample(x, i))
        parts = parts or [[] for _ in outs]
        if len(outs) != len(parts):
            raise InputError(f"the model returned {len(outs)} outputs for sample {i}, {len(parts)} before")
        for part, o in zip(parts, outs):
            part.append(np.asarray(o))
    return [np.concatenate(p) for p in parts]


def per_output(task, outputs: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> dict:
    """``output_quality`` (one row per output and declared slice, by the kind the task declares:
    ``edgeopt.pipeline.output_quality``) and ``worst_output`` (the row with the lowest share)."""
    from .output_quality import output_quality, worst_output

    rows = output_quality(list(outputs), list(references), getattr(task, "outputs", ()),
                          classifier=task.metric in ("top1", "agreement"))
    return {"output_quality": rows, "worst_output": worst_output(rows)}


def scores(task, outputs: np.ndarray, reference: np.ndarray, every_output: Sequence[np.ndarray] | None = None,
           every_reference: Sequence[np.ndarray] | None = None) -> dict:
    """``accuracy`` (top-1 tasks), ``metric_value`` (other labelled metrics), ``agreement``,
    ``task_metric``, ``output_quality`` and ``worst_output``.

    Agreement with the fp32 model is top-1 agreement for classifiers (2-D outputs or a top-1
    task) and, for regression and embedding outputs, the mean cosine similarity of each output
    to fp32's: both are 1.0 for a variant that changes nothing, and higher is better
    (``agreement_kind`` says which: ``"top1"`` or ``"cosine"``).

    ``task_metric`` is what a row is judged by, whatever the task: ``{"name", "value",
    "higher_is_better"}`` (top-1 accuracy for top-1 tasks, the error for ``mse`` / ``mae``, the
    similarity for ``cosine``; for unlabelled tasks, the worst output's agreement with fp32 by
    its kind, never exact float equality: top-1, matched detections, identical sequences, or
    ``1 - error / variance`` for other outputs, with ``"output"`` naming it).

    ``every_output`` / ``every_reference``: all of the variant's and fp32's outputs (default: the
    first, ``outputs`` and ``reference``); each is judged by the kind the task declares for it.
    """
    from edgeopt.compress.fidelity import compare_outputs

    out: dict = {"accuracy": None}
    value = None
    if task.labelled:
        value = task.score(outputs)
        if task.metric == "top1":
            out["accuracy"] = value
        else:
            out["metric_value"] = value
    classifier = task.metric in ("top1", "agreement") and outputs.ndim == 2
    if classifier:
        labels = outputs.argmax(axis=1)
        out["agreement"] = float(np.mean(labels == reference.argmax(axis=1)))
        out["predictions_sha256"] = predictions_digest(labels)
        out["agreement_kind"] = "top1"
    else:
        out["agreement"] = compare_outputs(outputs, reference, "cosine")
        out["predictions_sha256"] = hashlib.sha256(np.round(outputs.astype(np.float64), 4).tobytes()).hexdigest()[:16]
        out["agreement_kind"] = "cosine"
    if task.labelled:
        out["task_metric"] = {"name": task.metric, "value": value, "higher_is_better": task.higher_is_better}
    out.update(per_output(task, every_output if every_output is not None else [outputs],
                          every_reference if every_reference is not None else [reference]))
    if not task.labelled:  # no labels: agreement with fp32, of the output that kept least of it
        worst = out["worst_output"]
        out["task_metric"] = {"name": "agreement", "value": worst["normalized"], "higher_is_better": True,
                              "output": worst["label"]}
    return out


def sample_outcomes(task, outputs: np.ndarray) -> dict:
    """Each test sample's outcome, kept compactly so a comparison can be paired
    (``edgeopt.pipeline.gate_stats``): ``outcomes`` (top-1 right or wrong, as bits) for top-1
    tasks; ``sample_values`` (each sample's own error or similarity, float32) for mse, mae and
    cosine; nothing for an unlabelled task. ``samples``: how many."""
    from .gate_stats import pack_outcomes, pack_values

    y = task.test.y
    if y is None:
        return {}
    pred = np.asarray(outputs)
    if task.metric == "top1":
        labels = pred.argmax(axis=1) if pred.ndim == 2 else pred
        return {"samples": len(y), "outcomes": pack_outcomes(labels == y)}
    a = pred.reshape(len(y), -1).astype(np.float64)
    b = np.asarray(y).reshape(len(y), -1).astype(np.float64)
    if task.metric == "mse":
        values = np.mean((a - b) ** 2, axis=1)
    elif task.metric == "mae":
        values = np.mean(np.abs(a - b), axis=1)
    elif task.metric == "cosine":
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        cos = np.sum(a * b, axis=1) / np.maximum(na * nb, 1e-30)
        values = np.clip(np.where((na == 0) & (nb == 0), 1.0, cos), -1.0, 1.0)
    else:
        return {}
    return {"samples": len(y), "sample_values": pack_values(values)}


def artifact_digest(artifact) -> str:
    """One checksum of an artifact folder (over its manifest's per-file checksums): the gate
    re-times a baseline's artifact only when the folder is still the one that was measured."""
    sums = artifact.manifest.get("sha256") or {}
    return hashlib.sha256(repr(sorted(sums.items())).encode()).hexdigest()[:16]


def measure_entry(*, name: str, steps: list, runtime: str, target: str, runner, run_artifact,
                  model, fp32_onnx, task, reference: np.ndarray, example: np.ndarray | dict,
                  bench: BenchConfig, evaluation=None, references: Sequence[np.ndarray] | None = None,
                  latency: dict | None = None) -> dict:
    """Time ``runner`` and score it on ``task`` against the fp32 ``reference`` outputs; return the
    report entry (its fields are documented in ``edgeopt.pipeline.report_schema``).

    ``references``: every output of the fp32 model (``reference`` is the first); each output of
    the variant is compared with its own (``output_quality``, ``worst_output``). Without it, the
    first output only.

    ``evaluation``: an ``edgeopt.pipeline.evaluate.Evaluation`` adds per-class accuracy, slices,
    calibration, robustness and exemplars (it reuses the test outputs computed here).

    ``latency``: the ``latency_ms`` object when it was measured elsewhere (a cache of earlier
    measurements); ``None`` times ``runner`` here."""
    from edgeopt.compress import count_params, onnx_flops

    if latency is None:
        latency = runner.benchmark(example, warmup=bench.warmup, repeat=bench.repeat).latency.to_report()
        load = load_average()
        if load is not None:  # a wide spread on a busy machine is the load's, not the artifact's
            latency["load_1m"] = load
    every_output = collect_outputs(runner.run, task.test.x)
    outputs = every_output[0]
    if references is None:
        every_output = every_output[:1]
    extra = {} if evaluation is None else evaluation.evaluate(
        outputs, lambda a: runner.run(a)[0], f"{name}/{runtime}/{target}")
    return {
        "name": name,
        "steps": [s.to_dict() for s in steps],
        "runtime": runtime,
        "target": target,
        "size_bytes": run_artifact.size_bytes(),
        "params": count_params(model) if hasattr(model, "parameters") else onnx_params(fp32_onnx),
        "flops": onnx_flops(fp32_onnx),
        "latency_ms": latency,
        **scores(task, outputs, reference, every_output, references or [reference]),
        **sample_outcomes(task, outputs),
        "artifact": str(run_artifact.path),
        "artifact_sha256": artifact_digest(run_artifact),
        "history": step_changes(run_artifact.history),
        **extra,
    }


def load_average() -> float | None:
    """The 1-minute load average now (runnable threads, this process's included), or ``None``
    where the OS keeps none (Windows).

    >>> load_average() is None or load_average() >= 0
    True
    """
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def failed_entry(*, name: str, steps: list, runtime: str, target: str, error: BaseException) -> dict:
    """The report entry of a variant/target that could not be built or measured."""
    return {"name": name, "steps": [s.to_dict() for s in steps], "runtime": runtime, "target": target,
            "status": "failed", "error": one_line(error)}


def one_line(error: BaseException) -> str:
    """``error`` as one line: the message's first non-empty line, with the type for non-input errors."""
    text = first_line(error)
    if isinstance(error, (InputError, FileNotFoundError)) or text == type(error).__name__:
        return text
    return f"{type(error).__name__}: {text}"


def runtime_target(runtime: str, build: Any) -> str:
    """The target label of a report row: the TVM target's CPU or GPU arch, else ``cpu``; for
    TVM, every build option that changes the artifact is part of it (``znver3/onednn``,
    ``sm_89/fp16``): rows are keyed by it, and two targets that differ only in kernels or
    precision must never share a row (one's failure would hide behind the other's)."""
    if runtime != "tvm" or build is None:
        return "cpu"
    spec = build.spec
    label = spec.get("mcpu") or spec.get("arch") or spec.get("kind", "custom")
    options = [getattr(build, "kernels", "auto") if getattr(build, "kernels", "auto") != "auto" else "",
               getattr(build, "precision", "fp32") if getattr(build, "precision", "fp32") != "fp32" else "",
               "nograph" if getattr(build, "cuda_graph", True) is False else "",
               "exactmath" if getattr(build, "fast_math", True) is False else "",
               {True: "int8", False: "float"}.get(getattr(build, "int8", None), ""),
               "tuned" if getattr(build, "tune", None) is not None else ""]
    return "/".join([label, *[o for o in options if o]])
