"""Compile an ONNX model with TVM Relax into a deployable artifact folder.

ONNX -> ``relax.frontend.onnx.from_onnx`` (weights bound as constants) -> ``tvm.compile`` ->
``export_library`` -> artifact folder with ``model.so`` and a manifest holding the target.
This is the untuned build; without tuning TVM's CPU code is slow (TOOLCHAIN.md: ~180x slower
than onnxruntime on ResNet-18), which the benchmarks report as it is.

Example:
    >>> import edgeopt.compile.tvm_build as tb  # doctest: +SKIP
    >>> art = tb.build("build/demo/fp32.onnx", target="cpu", out="build/demo/fp32-tvm")  # doctest: +SKIP
    >>> art.manifest["target"]["kind"]  # doctest: +SKIP
    'llvm'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from edgeopt.runtimes.artifact import Artifact, write_artifact
from edgeopt.core.errors import InputError
from edgeopt.runtimes.onnx_file import load_onnx, onnx_io

from .targets import resolve_target, toolchain


def unsupported_ops(onnx_model) -> list[tuple[str, str]]:
    """(op_type, node name) of every node the Relax ONNX frontend has no converter for."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = _get_convert_map()
    return [(n.op_type, n.name or f"#{i}") for i, n in enumerate(onnx_model.graph.node)
            if n.op_type not in known]


def build(model: str | os.PathLike, target: str | dict = "cpu", out: str | os.PathLike = "build/tvm",
          history: Sequence[dict] = (), int8: bool | None = None, tune=None,
          log=lambda line: None) -> Artifact:
    """Compile the ONNX file ``model`` for ``target`` into the artifact folder ``out``.

    ``int8``: rewrite QDQ chains into int8 arithmetic with int8 weights
    (``edgeopt.compile.int8_rewrite``); ``None`` does it when the model holds QuantizeLinear.
    ``tune``: a ``TuneConfig``: schedules from MetaSchedule, tuned into (or reused from) the
    persisted database; ``None`` builds with TVM's default schedules.

    Raises:
        FileNotFoundError: ``model`` does not exist.
        InputError: not a valid ONNX file, an op TVM cannot import (each op and node named),
            or an unknown / malformed target.
    """
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
    return write_artifact(out, fill, format="tvm", files=["model.so"], inputs=inputs,
                          outputs=outputs, target=spec, history=[*history, record])


def _last_line(e: Any) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__
