"""Compile an ONNX model with TVM Relax into a deployable artifact folder.

ONNX -> ``relax.frontend.onnx.from_onnx`` (weights bound as constants) -> ``tvm.compile`` ->
``export_library`` -> artifact folder with ``model.so`` and a manifest holding the target.
Without tuning (``BuildConfig(tune=None)``) TVM's CPU code is slow (two orders of magnitude
behind onnxruntime on ResNet-18), which the benchmarks report as it is; ``tune=TuneConfig(...)``
takes schedules from MetaSchedule and its persisted database.

Example:
    >>> import edgeopt.compile as eoc  # doctest: +SKIP
    >>> r = eoc.build("build/demo/fp32.onnx", eoc.BuildConfig(target="cpu"), out="build/fp32-tvm")  # doctest: +SKIP
    >>> r.artifact.manifest["target"]["kind"]  # doctest: +SKIP
    'llvm'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from dataclasses import dataclass

from edgeopt.core.errors import InputError
from edgeopt.core.result import Progress, StepResult, reporter
from edgeopt.runtimes.artifact import Artifact, model_input, write_artifact
from edgeopt.runtimes.onnx_file import load_onnx, onnx_io

from .targets import resolve_target, toolchain


def unsupported_ops(onnx_model) -> list[tuple[str, str]]:
    """(op_type, node name) of every node the Relax ONNX frontend has no converter for."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = _get_convert_map()
    return [(n.op_type, n.name or f"#{i}") for i, n in enumerate(onnx_model.graph.node)
            if n.op_type not in known]


@dataclass(frozen=True)
class BuildConfig:
    """What to build for.

    Args:
        target: a preset (``cpu``, ``arm``, ``arm:BOARD``, ``cuda``, ``cuda:sm_XX``), a TVM target
            as JSON or a ``.json`` file, or a dict; checked when the config is made.
        int8: rewrite QDQ chains into int8 arithmetic with int8 weights
            (``edgeopt.compile.int8_rewrite``); ``None`` does it when the model holds
            QuantizeLinear.
        tune: a ``TuneConfig``: schedules from MetaSchedule, tuned into (or reused from) the
            persisted database; ``None`` builds with TVM's default schedules.
    """

    target: Any = "cpu"
    int8: bool | None = None
    tune: Any = None

    def __post_init__(self):
        from .tune import TuneConfig

        if self.int8 is not None and not isinstance(self.int8, bool):
            raise InputError(f"int8 must be true, false or null, got {self.int8!r}")
        if self.tune is not None and not isinstance(self.tune, TuneConfig):
            raise InputError(f"tune must be a TuneConfig or None, got {type(self.tune).__name__}")
        resolve_target(self.target)  # an unknown target fails now, before any work

    @property
    def spec(self) -> dict:
        return resolve_target(self.target)


def build(model: Any, config: BuildConfig | None = None, *legacy, out: str | os.PathLike | None = None,
          progress: Progress = None, history: Sequence[dict] | None = None, **legacy_options) -> StepResult:
    """Compile an ONNX model for ``config.target`` into the artifact folder ``out``.

    The step contract (``edgeopt.core.result``): input, config; returns a ``StepResult`` whose
    ``output`` is the TVM artifact. ``model`` is an ONNX file, an ONNX artifact folder (its
    history is carried on) or the ``StepResult`` of an export or quantize step.

    The earlier form ``build(model, target, out, int8=..., tune=..., log=...)`` still works
    (with a ``DeprecationWarning``) and returns the ``Artifact`` itself.

    Raises:
        FileNotFoundError: ``model`` does not exist.
        InputError: not a valid ONNX file, an op TVM cannot import (each op and node named),
            or an unknown / malformed target.
    """
    legacy_call = not isinstance(config, (BuildConfig, type(None))) or "target" in legacy_options \
        or bool(set(legacy_options) & {"int8", "tune", "log"})
    if legacy_call:
        import warnings

        warnings.warn("build(model, target, out, ...) is deprecated; call "
                      "build(model, BuildConfig(target=...), out=out)", DeprecationWarning, stacklevel=2)
        target = legacy_options.pop("target", config if config is not None else "cpu")
        if legacy and out is None:
            out = legacy[0]
        log = legacy_options.pop("log", None)
        config = BuildConfig(target=target, int8=legacy_options.pop("int8", None),
                             tune=legacy_options.pop("tune", None))
        progress = log if log is not None else progress
    elif legacy:
        raise InputError("build takes (model, config) and keyword options; got extra arguments")
    if legacy_options:
        raise InputError(f"build got unknown option(s) {sorted(legacy_options)}")
    config = BuildConfig() if config is None else config
    if out is None:
        raise InputError("build needs out=: the artifact folder to write")
    path, carried, _ = model_input(model, "onnx", "build")
    carried = list(history) if history is not None else carried
    result = _build(path, config, Path(out), carried, reporter(progress))
    return result.output if legacy_call else result


def _build(model: Path, config: BuildConfig, out: Path, history: list, log) -> StepResult:
    target, int8, tune = config.target, config.int8, config.tune
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from .onnx_prepare import prepare_onnx

    onnx_model = prepare_onnx(load_onnx(model))  # old opsets, Constant weights, run-time shapes
    missing = unsupported_ops(onnx_model)
    if missing:
        listed = ", ".join(f"{op} (node {name!r})" for op, name in missing)
        raise InputError(f"TVM's ONNX frontend cannot import {str(model)!r}: unsupported op(s) {listed}")
    spec = resolve_target(target)
    tools = toolchain(spec)
    tools.check()  # fail before the (long) compile when the cross compiler is missing
    inputs, outputs = onnx_io(onnx_model)
    try:
        mod = from_onnx(onnx_model, keep_params_in_input=False)
    except Exception as e:
        raise InputError(f"TVM's ONNX frontend failed on {str(model)!r}: {_last_line(e)}") from None
    if int8 is None:
        int8 = any(n.op_type == "QuantizeLinear" for n in onnx_model.graph.node)
    rewritten = 0
    if int8:
        from .int8_rewrite import rewrite_qdq_to_int8

        mod, rewritten = rewrite_qdq_to_int8(mod)
    mod = relax.transform.DecomposeOpsForInference()(mod)
    tvm_target = tvm.target.Target(spec)
    if spec.get("kind") == "cuda":
        from .cuda_host import prepare_cuda_build

        prepare_cuda_build()
    tuning = None
    with tvm_target:  # the CUDA compile callback reads the arch from the current target
        if tune is not None:
            from .tune import tune as run_tuning

            prepack = tune.weight_prepack and spec.get("kind") == "llvm"
            mod = tvm.transform.Sequential([
                relax.transform.CanonicalizeBindings(), relax.get_pipeline("zero"),
                # Marks weight buffers as free to re-layout, so schedules may pick a blocked layout.
                *([relax.transform.AttachAttrLayoutFreeBuffers()] if prepack else [])])(mod)
            db, tuning = run_tuning(mod, spec, tune, log)
            mod = relax.transform.MetaScheduleApplyDatabase(str(db))(mod)
            if prepack:
                # The weights are constants of the module, so the layout transforms split out of
                # the kernels fold into the stored weights: the artifact keeps its interface.
                mod = tvm.transform.Sequential([relax.transform.SplitLayoutRewritePreproc(),
                                                relax.transform.FoldConstant()])(mod)
        executable = tvm.compile(mod, target=tvm_target)

    def fill(tmp: Path) -> None:
        # Debug sections are a third of an untuned int8 library and of no use on a device.
        kwargs = {"cc": tools.compiler} if tools.compiler else {}
        executable.export_library(str(tmp / "model.so"), options=["-Wl,--strip-debug"], **kwargs)

    record = {"name": "compile", "config": {"target": spec, "tuned": tune is not None, "int8": bool(int8),
                                            "tune_trials": tune.trials if tune else 0},
              "metrics": {"int8_ops": rewritten, **({"tuning": tuning} if tuning else {})}}
    artifact = write_artifact(out, fill, format="tvm", files=["model.so"], inputs=inputs,
                              outputs=outputs, target=spec, history=[*history, record])
    return StepResult(artifact, record, history)


def _last_line(e: Any) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__
