"""Export a torch model to ONNX and check it numerically against the torch model.

``export`` runs ``torch.onnx.export`` (the torch.export-based exporter, opset >= 17), the ONNX
checker and shape inference, then a parity check: the torch model and onnxruntime run on the
example input and on any real inputs given, and the largest error is compared with the
tolerance. The file is written only when everything passed (atomically: a temporary file is
renamed into place), so a failed export leaves nothing behind.

Relative error is ``max|torch - onnx| / max|torch|`` per output: an error scaled by the output's
magnitude, which (unlike an element-wise ratio) does not blow up on outputs near zero.

Example:
    >>> import torch, tempfile, os
    >>> from edgeopt.compile import ExportConfig, export
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()).eval()
    >>> out = os.path.join(tempfile.mkdtemp(), "tiny.onnx")
    >>> result = export(model, ExportConfig(), torch.randn(1, 8), out=out)
    >>> result.metrics["parity"]["passed"], result.path.name
    (True, 'tiny.onnx')
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from edgeopt.core.config import StepConfig, config_argument
from edgeopt.core.files import atomic_file
from edgeopt.core.result import Progress, StepResult, reporter, unwrap
from edgeopt.runtimes.artifact import write_artifact
from edgeopt.core.errors import InputError, ParityError, first_line
from edgeopt.core.phrases import said, size

MIN_OPSET = 17


@dataclass(frozen=True)
class ExportConfig(StepConfig):
    """How to export and how strictly to check.

    Args:
        opset: ONNX opset (>= 17).
        dynamic_batch: make axis 0 of every input and output symbolic ("batch").
        rtol: parity tolerance on the relative error max|torch - onnx| / max|torch| (module
            docstring).
        input_names, output_names: ONNX value names (defaults: ``input``, ``output``; more
            inputs or outputs are numbered ``input1``, ...).
    """

    opset: int = 18
    dynamic_batch: bool = False
    rtol: float = 1e-4
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()

    def validate(self):
        if self.opset < MIN_OPSET:
            raise InputError(f"opset must be an integer >= {MIN_OPSET}, got {self.opset!r}")
        if not self.rtol > 0:
            raise InputError(f"rtol must be a positive number, got {self.rtol!r}")


@dataclass(frozen=True)
class ParityReport:
    """Largest disagreement between torch and onnxruntime over all checked inputs."""

    max_abs: float
    max_rel: float
    rtol: float
    n_inputs: int

    @property
    def passed(self) -> bool:
        return self.max_rel <= self.rtol

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def export(model, config: ExportConfig | None = None, example_inputs: Any = None, *,
           out: str | os.PathLike | None = None, check_inputs: Iterable[Any] = (),
           progress: Progress = None, history: Sequence[dict] | None = None) -> StepResult:
    """Export ``model`` to ONNX at ``out`` after a successful parity check.

    The step contract (``edgeopt.core.result``): input, config, data; returns a ``StepResult``
    whose ``output`` is the artifact (folder ``out``) or the file (``.onnx`` ``out``), and whose
    ``metrics["parity"]`` holds the check (``max_abs``, ``max_rel``, ``rtol``, ``n_inputs``).

    Args:
        model: a ``torch.nn.Module``, or the ``StepResult`` of a torch-level step (its history
            goes into the manifest). Evaluated in eval mode; the caller's module keeps its mode.
        config: ``ExportConfig`` (default: opset 18, static shapes, rtol 1e-4).
        example_inputs: a tensor or a tuple of tensors: the shapes the model is exported with.
        out: a path ending in ``.onnx`` (one file), or a folder (an artifact: ``model.onnx`` and
            ``manifest.json``).
        check_inputs: more inputs (each a tensor or tuple of tensors, numpy accepted) for the
            parity check, e.g. real task samples. With a static batch they must have the
            example's shapes.
        progress: ``True`` or a callable: one line with the parity result.
        history: records to carry instead of the model's own (rarely needed).

    Raises:
        InputError: ``config`` is not an ``ExportConfig``, the model rejects the example input,
            or has an op the exporter cannot export.
        ParityError: onnxruntime's outputs differ from torch's by more than ``config.rtol``.
    """
    import torch

    config = config_argument("export", config, ExportConfig, "export(model, ExportConfig(), example_inputs, out=...)")
    if out is None:
        raise InputError("export needs out=: an .onnx file or a folder for the artifact")
    if example_inputs is None:
        raise InputError("export needs example_inputs: a tensor (or tuple) of the shape the model takes")
    model, carried = unwrap(model)
    carried = list(history) if history is not None else carried
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"export needs a torch.nn.Module, got {type(model).__name__}")
    example = _as_tensors(example_inputs, "example_inputs")
    with _eval_mode(model):
        return _export(model, config, example, Path(out), check_inputs, carried, reporter(progress))


@contextlib.contextmanager
def _eval_mode(model):
    """Eval mode for the export; every submodule's own mode is restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _export(model, config: ExportConfig, example: tuple, out: Path, check_inputs, history: list,
            say) -> StepResult:
    torch_outputs = _torch_forward(model, example)
    in_names = _names(config.input_names, "input", len(example))
    out_names = _names(config.output_names, "output", len(torch_outputs))

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.export-", dir=out.parent) as tmp:
        tmp_file = Path(tmp) / "model.onnx"
        _torch_onnx_export(model, example, tmp_file, config, in_names, out_names)
        onnx_model = _check_and_infer(tmp_file)
        from edgeopt.runtimes.onnx_file import onnx_io

        inputs, outputs = onnx_io(onnx_model)
        checks = [example] + [_as_tensors(c, "check_inputs") for c in check_inputs]
        parity = parity_check(model, tmp_file, checks, config.rtol)
        if not parity.passed:
            raise ParityError(
                f"ONNX export of {type(model).__name__} disagrees with torch: max relative error "
                f"{parity.max_rel:.3g} > tolerance {config.rtol:g} (max abs {parity.max_abs:.3g}, "
                f"{parity.n_inputs} inputs)")
        say(f"export: parity vs torch max abs {parity.max_abs:.2e}, max rel {parity.max_rel:.2e} "
            f"over {parity.n_inputs} inputs (tolerance {parity.rtol:g})")
        record = {
            "name": "export",
            "config": asdict(config),
            "metrics": {"parity": parity.to_dict(), "opset": config.opset,
                        "size_bytes": tmp_file.stat().st_size,
                        "params": sum(p.numel() for p in model.parameters())},
        }
        if out.suffix == ".onnx":
            with atomic_file(out) as dst:  # the one atomic-write helper: umask permissions
                os.replace(tmp_file, dst)
            output: Any = out
        else:
            output = write_artifact(
                out, lambda d: os.replace(tmp_file, d / "model.onnx"), format="onnx",
                files=["model.onnx"], inputs=inputs, outputs=outputs,
                history=[*history, record])
    return StepResult(output, record, history)


def parity_check(model, onnx_path: str | os.PathLike, checks: Sequence[Sequence[Any]],
                 rtol: float = 1e-4) -> ParityReport:
    """Run torch and onnxruntime on each input tuple in ``checks`` and return the worst error."""
    import torch

    from edgeopt.runtimes.onnxruntime_runner import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(onnx_path)
    max_abs = max_rel = 0.0
    for args in checks:
        with torch.inference_mode():
            ref = _flatten(model(*args))
        got = runner.run([a.detach().cpu().numpy() for a in args])
        if len(got) != len(ref):
            raise ParityError(f"torch gives {len(ref)} outputs, the ONNX model {len(got)}")
        for r, g in zip(ref, got):
            r = r.detach().cpu().numpy().astype(np.float64)
            g = np.asarray(g, dtype=np.float64)
            if r.shape != g.shape:
                raise ParityError(f"output shape differs: torch {r.shape}, ONNX {g.shape}")
            err = float(np.max(np.abs(r - g))) if r.size else 0.0
            scale = float(np.max(np.abs(r))) if r.size else 0.0
            max_abs = max(max_abs, err)
            max_rel = max(max_rel, err / max(scale, 1e-12))
    return ParityReport(max_abs=max_abs, max_rel=max_rel, rtol=rtol, n_inputs=len(checks))


# -- helpers --------------------------------------------------------------------------------

def _as_tensors(x: Any, what: str) -> tuple:
    import torch

    items = x if isinstance(x, (tuple, list)) else (x,)
    out = []
    for t in items:
        if isinstance(t, np.ndarray):
            t = torch.from_numpy(t)
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{what} must be tensors or numpy arrays, got {type(t).__name__}")
        out.append(t)
    return tuple(out)


def _flatten(out: Any) -> list:
    """The output tensors in the order the ONNX exporter writes them: nested tuples, lists and
    dicts (in insertion order) flattened, as ``torch.utils._pytree`` does."""
    from torch.utils._pytree import tree_leaves

    return list(tree_leaves(out))


def _names(given: Sequence[str], stem: str, n: int) -> list[str]:
    if given:
        if len(given) != n:
            raise InputError(f"{len(given)} {stem} names given for {n} {stem}s: {list(given)}")
        return list(given)
    return [stem if i == 0 else f"{stem}{i}" for i in range(n)]


def _shapes(tensors: Sequence[Any]) -> str:
    return ", ".join(str(tuple(t.shape)) for t in tensors)


def _torch_forward(model, example: tuple) -> list:
    import torch

    try:
        with torch.inference_mode():
            return _flatten(model(*example))
    except Exception as e:  # the model's own shape checks raise anything
        raise InputError(
            f"{type(model).__name__} rejects input(s) of shape {_shapes(example)}: "
            f"{first_line(e)}; "
            "pass an input shape the model accepts") from None


def _torch_onnx_export(model, example: tuple, path: Path, config: ExportConfig,
                       in_names: list[str], out_names: list[str]) -> None:
    import torch

    args = example
    dynamic_shapes = None
    if config.dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=4096)
        dynamic_shapes = tuple({0: batch} for _ in example)
        if example[0].shape[0] == 1:
            # torch.export specializes dimensions of size 1; trace with a batch of 2.
            args = tuple(torch.cat([t, t]) for t in example)
    log = io.StringIO()
    try:
        with _quiet_exporter(log):
            torch.onnx.export(model, args, str(path), opset_version=config.opset,
                              input_names=in_names, output_names=out_names,
                              dynamic_shapes=dynamic_shapes, dynamo=True, external_data=False,
                              verbose=False)
    except Exception as e:
        raise InputError(_explain_export_failure(model, args, e)) from None


@contextlib.contextmanager
def _quiet_exporter(sink: io.StringIO):
    """The exporter prints progress lines and warnings about torchvision; keep them out."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _explain_export_failure(model, args: tuple, err: Exception) -> str:
    """Name the op (and the module that calls it) the exporter could not convert."""
    import torch

    text = str(err)
    op = None
    for pattern in (r"op='([\w.:]+)'", r"operator '([\w:.]+)'", r"torch\.ops\.([\w.]+)"):
        m = re.search(pattern, text)
        if m:
            op = m.group(1)
            break
    name = type(model).__name__
    if op is None:
        return f"cannot export {name} to ONNX: {first_line(err)}"
    where = ""
    try:
        with _quiet_exporter(io.StringIO()):
            program = torch.export.export(model, args)
        base = op.replace("::", ".").removesuffix(".default")
        for node in program.graph.nodes:
            if node.op == "call_function" and base in str(node.target):
                stack = node.meta.get("nn_module_stack") or {}
                if stack:
                    path, cls = list(stack.values())[-1]
                    cls_name = getattr(cls, "__name__", str(cls)).rsplit(".", 1)[-1]
                    where = f" in module {path or '<root>'!r} ({cls_name})"
                break
    except Exception:  # locating the module is best effort; the op name is the message
        pass
    return (f"cannot export {name} to ONNX: op {op}{where} has no ONNX conversion at this opset; "
            "replace it with supported ops or register a custom translation")


def _check_and_infer(path: Path):
    """Run the ONNX checker and save the model with inferred shapes for every value."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=False)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=False)
    onnx.save(inferred, str(path))
    return inferred


def describe(metrics: dict, config: dict) -> list[str]:
    """What an export record says, as the report says it (opset, size, parity).

    >>> describe({"opset": 18, "parity": {"max_rel": 1e-6}}, {})
    ['opset 18', 'parity max rel error 1e-06']
    """
    return (said(metrics, ("opset", "opset {}"), ("size_bytes", lambda n: f"size {size(n)}"))
            + said(metrics.get("parity") or {}, ("max_rel", "parity max rel error {:.2g}")))
