"""Measure one model on several runtimes in one run: export, compile, time, score, report.

This is the fp32 column of a trade-off study: the model is exported (parity-checked), saved as a
``.pt2`` torch artifact, compiled with TVM for the host CPU, then each runtime is timed in its
own block (never interleaved, so one backend's idle threads cannot slow another) and, when a
task is given, scored on the task's test split.

Example:
    >>> import numpy as np, tempfile  # doctest: +SKIP
    >>> from edgeopt.pipeline.study import compare_runtimes  # doctest: +SKIP
    >>> from edgeopt.pipeline.zoo import create  # doctest: +SKIP
    >>> report = compare_runtimes(create("digits_cnn"), np.zeros((1, 1, 32, 32), "float32"),
    ...                           tempfile.mkdtemp(), repeat=20)  # doctest: +SKIP
    >>> [v["runtime"] for v in report["variants"]]  # doctest: +SKIP
    ['torch', 'onnxruntime', 'tvm']
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgeopt.runtimes import check_runtime, load, machine_fingerprint, write_artifact
from edgeopt.core.errors import InputError

from .report import make_report
from .tasks import Task, predict


@dataclass(frozen=True)
class BenchConfig:
    """Timing settings: untimed warm-up runs, timed runs, worker threads per backend."""

    warmup: int = 10
    repeat: int = 100
    threads: int | None = None

    def __post_init__(self):
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise InputError(f"warmup must be an integer >= 0, got {self.warmup!r}")
        if not isinstance(self.repeat, int) or self.repeat < 1:
            raise InputError(f"repeat must be an integer >= 1, got {self.repeat!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise InputError(f"threads must be an integer >= 1, got {self.threads!r}")

    @property
    def resolved_threads(self) -> int:
        return self.threads or os.cpu_count() or 1


def save_torch_artifact(model, example: np.ndarray, out: str | os.PathLike, history: Sequence[dict] = ()):
    """Save ``model`` as a ``torch.export`` program (``model.pt2``) in an artifact folder."""
    import torch

    from edgeopt.core.tensors import TensorSpec

    x = torch.from_numpy(example)
    program = torch.export.export(model.eval(), (x,))
    with torch.inference_mode():
        y = model(x)
    outs = y if isinstance(y, (tuple, list)) else [y]
    inputs = [TensorSpec("input", list(x.shape), str(x.dtype).replace("torch.", ""))]
    outputs = [TensorSpec(f"output{i}" if i else "output", list(o.shape),
                          str(o.dtype).replace("torch.", "")) for i, o in enumerate(outs)]
    return write_artifact(out, lambda d: torch.export.save(program, str(d / "model.pt2")),
                          format="torch", files=["model.pt2"], inputs=inputs, outputs=outputs,
                          history=history)


def compare_runtimes(model, example: np.ndarray, out_dir: str | os.PathLike,
                     runtimes: Sequence[str] = ("torch", "onnxruntime", "tvm"), task: Task | None = None,
                     bench: BenchConfig = BenchConfig(), name: str = "fp32",
                     log: Callable[[str], None] = print) -> dict:
    """Export, compile and time ``model`` on each runtime; return the report.json object.

    With a ``task``, every runtime also predicts the task's test split (batch 1) and the report
    holds its top-1 accuracy and its top-1 agreement with torch.
    """
    import torch

    from edgeopt.compile import export
    from edgeopt.compile.tvm_build import build
    from edgeopt.compress import count_params, onnx_flops

    from .tasks import torch_logits

    for r in runtimes:
        check_runtime(r)
    if "onnxruntime" not in runtimes:
        raise InputError("the report's latency reference is onnxruntime; include it in runtimes")
    out = Path(out_dir)
    threads = bench.resolved_threads
    torch.set_num_threads(threads)
    model = model.eval()

    log(f"[{name}] exporting to ONNX with a parity check")
    checks = [task.test.x[i:i + 1] for i in range(16)] if task is not None else []
    exported = export(model, example, out / f"{name}-onnx", check_inputs=checks)
    p = exported.parity
    log(f"[{name}] parity vs torch: max abs {p.max_abs:.2e}, max rel {p.max_rel:.2e} "
        f"over {p.n_inputs} inputs (tolerance {p.rtol:g})")
    artifacts = {"onnxruntime": exported.artifact}
    if "torch" in runtimes:
        artifacts["torch"] = save_torch_artifact(model, example, out / f"{name}-torch")
    if "tvm" in runtimes:
        log(f"[{name}] compiling with TVM for the host CPU (untuned)")
        artifacts["tvm"] = build(exported.path, target="cpu", out=out / f"{name}-tvm-cpu",
                                 history=exported.artifact.history)
    flops = onnx_flops(exported.path)
    params = count_params(model)
    reference_preds = None
    if task is not None:
        reference_preds = torch_logits(model, task.test.x).argmax(axis=1)

    variants = []
    for r in runtimes:
        if r == "torch":
            from edgeopt.runtimes.torch_runner import TorchRunner

            # Time the eager module itself; the .pt2 artifact is what gets shipped.
            runner = TorchRunner(model, example=[torch.from_numpy(example)], threads=threads)
        else:
            runner = load(artifacts[r], runtime=r, threads=threads)
        log(f"[{name}] timing {r}: {bench.warmup} warm-up + {bench.repeat} runs")
        result = runner.benchmark(example, warmup=bench.warmup, repeat=bench.repeat)
        entry = {
            "name": name, "steps": [], "runtime": r,
            "target": (artifacts[r].manifest.get("target") or {}).get("mcpu", "cpu") if r == "tvm" else "cpu",
            "size_bytes": artifacts[r].size_bytes() if r in artifacts else None,
            "params": params, "flops": flops,
            "latency_ms": result.latency.to_report(),
            "artifact": str(artifacts[r].path) if r in artifacts else None,
        }
        if task is not None:
            preds = predict(lambda a: runner.run(a)[0], task.test.x)
            entry["accuracy"] = task.score(preds)
            entry["agreement"] = float(np.mean(preds == reference_preds))
            entry["predictions_sha256"] = _digest(preds)
        variants.append(entry)

    task_info = {"name": task.name, "metric": task.metric} if task is not None else None
    return make_report(variants, machine_fingerprint(threads), task_info, f"{name}/onnxruntime")


def _digest(preds: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(preds, dtype=np.int64).tobytes()).hexdigest()[:16]
