"""Compile an ONNX model with TVM Relax into a deployable artifact folder.

ONNX -> ``relax.frontend.onnx.from_onnx`` (weights bound as constants) -> ``tvm.compile`` ->
``export_library`` -> artifact folder with ``model.so`` and a manifest holding the target.
Where convolutions and matmuls come from is ``BuildConfig.kernels``: TVM's own kernels are slow
untuned (two orders of magnitude behind onnxruntime on ResNet-18) and need MetaSchedule
(``tune=TuneConfig(...)``, a persisted database); on x86-64 CPUs the default ``auto`` runs them
on oneDNN through edgeopt's plugin (``edgeopt.compile.onednn_offload``), which the artifact
carries, and when a build is tuned it times both and keeps the faster.

Example:
    >>> import edgeopt.compile as eoc  # doctest: +SKIP
    >>> r = eoc.build("build/demo/fp32.onnx", eoc.BuildConfig(target="cpu"), out="build/fp32-tvm")  # doctest: +SKIP
    >>> r.artifact.manifest["target"]["kind"]  # doctest: +SKIP
    'llvm'
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Sequence

from dataclasses import dataclass, field

from edgeopt.core.config import StepConfig, config_argument
from edgeopt.core.errors import InputError, last_line
from edgeopt.core.result import Progress, StepResult, reporter
from edgeopt.runtimes.artifact import model_input, write_artifact
from edgeopt.runtimes.onnx_file import load_onnx, onnx_io

from .conv_layouts import error_summary
from .targets import required_cpu_features, resolve_target, toolchain
from .tune import TuneConfig


def unsupported_ops(onnx_model) -> list[tuple[str, str]]:
    """(op_type, node name) of every node the Relax ONNX frontend has no converter for."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = _get_convert_map()
    return [(n.op_type, n.name or f"#{i}") for i, n in enumerate(onnx_model.graph.node)
            if n.op_type not in known]


KERNELS = ("auto", "tvm", "onednn")
PRECISIONS = ("fp32", "fp16", "bf16", "auto")
#: bf16 is kept by ``precision: auto`` only when it is at least this much faster than fp32 here
#: (two builds timed in interleaved rounds differ by a few percent on a quiet machine) ...
AUTO_BF16_MIN_SPEEDUP = 1.05
#: ... and every output stays within this cosine of fp32's on random inputs (bf16 keeps 8 bits of
#: mantissa: a ResNet-18's logits come out near 0.9999; a model bf16 breaks falls far below)
AUTO_BF16_MIN_COSINE = 0.999
#: the CPU flag (Linux's name) and LLVM feature a reduced-precision CPU build needs
CPU_PRECISION_FEATURE = {"bf16": ("avx512_bf16", "avx512bf16"), "fp16": ("avx512_fp16", "avx512fp16")}


def check_precision(precision: str, spec: dict, kernels: str = "auto", name: str | None = None) -> None:
    """``InputError`` when ``spec`` cannot build ``precision`` (``fp16``: cuda targets; ``bf16``:
    x86-64 CPU targets whose features include avx512_bf16, with oneDNN's kernels), naming the CPU
    flag a CPU target lacks. ``name`` is the target as the user gave it, for the message.

    >>> check_precision("bf16", {"kind": "llvm", "mcpu": "znver4"})
    >>> check_precision("bf16", {"kind": "llvm", "mcpu": "znver3"}, name="cpu:znver3")
    Traceback (most recent call last):
    ...
    edgeopt.core.errors.InputError: precision 'bf16' on a CPU needs avx512_bf16 (a flag in /proc/cpuinfo), which target 'cpu:znver3' lacks; build fp32 (or int8: quantize the model first)
    """
    from .targets import isa_features

    kind = spec.get("kind")
    if precision == "fp16" and kind == "cuda":
        return
    if not is_x86_cpu(spec):
        wanted = "a cuda target" if precision == "fp16" else "an x86-64 CPU target with avx512_bf16"
        raise InputError(f"precision {precision!r} needs {wanted}; this target is {kind!r} "
                         f"{spec.get('mtriple', '')}".rstrip() + ": build fp32 (or int8: quantize the model first)")
    flag, feature = CPU_PRECISION_FEATURE[precision]
    if feature not in isa_features(spec):
        which = ("target 'cpu' (this CPU, by its flags)" if name == "cpu" else f"target {name!r}" if name
                 else f"target {spec.get('mcpu') or 'generic x86-64'}")
        raise InputError(f"precision {precision!r} on a CPU needs {flag} (a flag in /proc/cpuinfo), which "
                         f"{which} lacks; build fp32 (or int8: quantize the model first)")
    if precision == "fp16":
        raise InputError("precision 'fp16' on a CPU target: edgeopt's oneDNN plugin has no float16 CPU kernels "
                         "(it makes no f16 primitives; oneDNN 3.2, which it is built with, has them only for "
                         "avx512_fp16 CPUs); build bf16 (avx512_fp16 CPUs have avx512_bf16)")
    if kernels == "tvm":
        raise InputError("precision 'bf16' runs convs and matmuls as oneDNN's bf16 kernels; kernels 'tvm' "
                         "has no bf16 path (use kernels auto or onednn)")


def is_x86_cpu(spec: dict) -> bool:
    """True for an LLVM target that builds x86-64 code (the host's, or an x86-64 triple)."""
    import platform

    if spec.get("kind") != "llvm":
        return False
    triple = spec.get("mtriple") or ""
    return triple.startswith("x86_64") if triple else platform.machine() == "x86_64"


@dataclass(frozen=True)
class BuildConfig(StepConfig):
    """What to build for.

    Args:
        target: a preset (``cpu``, ``arm``, ``arm:BOARD``, ``cuda``, ``cuda:sm_XX``), a TVM target
            as JSON or a ``.json`` file, or a dict; checked when the config is made.
        int8: rewrite QDQ chains into int8 arithmetic with int8 weights
            (``edgeopt.compile.int8_rewrite``); ``None`` does it when the model holds
            QuantizeLinear.
        tune: a ``TuneConfig``: schedules from MetaSchedule, tuned into (or reused from) the
            persisted database; ``None`` builds with TVM's default schedules.
        precision: ``fp32``; ``fp16`` (cuda targets): convs and matmuls run in float16 with
            float32 accumulation (``relax.transform.ToMixedPrecision``); ``bf16`` (x86-64 CPU
            targets whose features include avx512_bf16): the float convs and matmuls oneDNN
            takes run as bf16 kernels, their weights stored in bfloat16, their activations
            converted at the call, the products accumulated in float32 and their outputs float32
            (bias, residual and activation applied in float32); everything else stays float32.
            Inputs and outputs stay float32 in every precision. Convs on cuda targets always run
            in NHWC (the layout TVM's GPU schedules tile well); the model's inputs and outputs
            keep their layout. fp16 on a CPU is refused: edgeopt's oneDNN plugin makes no float16
            primitives (oneDNN 3.2, which it is built with, has f16 kernels only for avx512_fp16
            CPUs, where bf16 runs too).
            ``auto``: fp32 and bf16 both built and timed on this host where bf16 can run (an
            x86-64 CPU target of this machine with avx512_bf16, oneDNN's kernels, a float
            model), bf16 kept when it is at least ``AUTO_BF16_MIN_SPEEDUP`` faster and every
            output within ``AUTO_BF16_MIN_COSINE`` of fp32's on random inputs; elsewhere fp32.
            The record's ``precision`` and ``precision_why`` say what was chosen and why.
        cuda_graph: on cuda targets, capture the model's kernel launches into CUDA graphs that are
            replayed on every call (``relax.transform.RewriteCUDAGraph``): at batch 1 a GPU is
            bound by launch overhead, not arithmetic. Ignored on CPU targets.
        kernels: where float32 convolutions and matmuls with constant weights come from on an
            x86-64 CPU target: ``tvm`` (TVM's kernels, tuned when ``tune`` is set), ``onednn``
            (oneDNN through edgeopt's plugin, with bias, residual add and activation fused; TVM
            keeps the rest of the model; needs requirements/onednn.txt in the venv and cmake at
            build time), or
            ``auto``: oneDNN for an untuned build, and for a tuned one both builds timed on this
            host, the faster kept (the record names the choice and both latencies); a oneDNN
            build that fails is built with TVM's kernels (``kernel_fallback`` in the record says
            why). Without oneDNN, and on other targets, ``auto`` means ``tvm``.
        fast_math: CPU targets compute erf, tanh and sigmoid (the model's Erf / Tanh / Sigmoid
            nodes: GELU, Mish, tanh-GELU, SiLU) as TVM's polynomial approximations, which
            vectorize, instead of TVM's default lowering (a C library call per element); within 1e-6 of the exact
            functions (``edgeopt.compile.fast_math``). exp is left exact. False keeps the
            default lowering.
        input_shape: concrete input shape(s) for a model with dynamic dimensions: one shape
            (``"1,3,48,320"`` or a list) or ``{input name: shape}``; written into the graph
            before TVM's import (``edgeopt.compile.onnx_shapes``). A dynamic batch axis may stay
            dynamic; any other dynamic dimension needs it.
    """

    target: Any = "cpu"
    int8: bool | None = None
    tune: TuneConfig | None = field(default=None, metadata={"nested": TuneConfig})
    precision: str = "fp32"
    cuda_graph: bool = True
    kernels: str = "auto"
    fast_math: bool = True
    input_shape: Any = None

    def validate(self):
        from .onnx_shapes import parse_input_shape

        object.__setattr__(self, "input_shape", parse_input_shape(self.input_shape))  # malformed: now
        if self.tune is not None and not isinstance(self.tune, TuneConfig):
            raise InputError(f"tune must be a TuneConfig or None, got {type(self.tune).__name__}")
        spec = resolve_target(self.target)  # an unknown target fails now, before any work
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.kernels not in KERNELS:
            raise InputError(f"kernels must be one of {', '.join(KERNELS)}, got {self.kernels!r}")
        if self.precision not in ("fp32", "auto"):
            check_precision(self.precision, spec, self.kernels,
                            self.target if isinstance(self.target, str) else None)
        if self.kernels == "onednn" and not is_x86_cpu(spec):
            raise InputError("kernels 'onednn' needs an x86-64 CPU target (oneDNN's kernels); "
                             f"this target is {spec.get('kind')!r} {spec.get('mtriple', '')}".rstrip())

    @property
    def spec(self) -> dict:
        return resolve_target(self.target)


def build(model: Any, config: BuildConfig | None = None, *, out: str | os.PathLike | None = None,
          progress: Progress = None, history: Sequence[dict] | None = None) -> StepResult:
    """Compile an ONNX model for ``config.target`` into the artifact folder ``out``.

    The step contract (``edgeopt.core.result``): input, config; returns a ``StepResult`` whose
    ``output`` is the TVM artifact. ``model`` is an ONNX file, an ONNX artifact folder (its
    history is carried on) or the ``StepResult`` of an export or quantize step.

    Raises:
        FileNotFoundError: ``model`` does not exist.
        InputError: ``config`` is not a ``BuildConfig``, not a valid ONNX file, an op TVM cannot
            import (each op and node named), or an unknown / malformed target.
    """
    hint = f"BuildConfig(target={config!r})" if isinstance(config, str) else "BuildConfig(...)"
    config = config_argument("build", config, BuildConfig, f"build(model, {hint}, out=...)")
    if out is None:
        raise InputError("build needs out=: the artifact folder to write")
    path, carried, _ = model_input(model, "onnx", "compile")
    carried = list(history) if history is not None else carried
    return _build(path, config, Path(out), carried, reporter(progress))


def _build(model: Path, config: BuildConfig, out: Path, history: list, log) -> StepResult:
    target, int8, tune = config.target, config.int8, config.tune
    from tvm.relax.frontend.onnx import from_onnx

    from .onnx_prepare import prepare_onnx

    from .onnx_shapes import onnx_inputs, resolve_input_shapes

    onnx_model = load_onnx(model)
    # TVM imports static shapes (a dynamic batch excepted); others fail deep in its frontend
    shapes = resolve_input_shapes(onnx_inputs(onnx_model), config.input_shape,
                                  option="--input-shape (BuildConfig.input_shape)")
    # old opsets, Constant weights, run-time shapes; LSTM/GRU unrolled (the importer has no converter)
    onnx_model = prepare_onnx(onnx_model, input_shapes=shapes, static_graph=True)
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
        raise InputError(f"TVM's ONNX frontend failed on {str(model)!r}: {last_line(e)}") from None
    if int8 is None:
        int8 = any(n.op_type == "QuantizeLinear" for n in onnx_model.graph.node)
    export = {"cc": tools.compiler} if tools.compiler else {}
    if config.precision == "auto":
        executable, details, kernels, why = _fp32_or_bf16(model, mod, spec, config, inputs, outputs, export,
                                                          log, int8)
    else:
        executable, details, kernels, why = _build_with_kernels(model, mod, spec, config, inputs, outputs,
                                                                export, log, int8)
    rewritten = details.pop("int8_ops", 0)
    if kernels == "onednn" and not any(details.get("library_ops", {}).values()):
        kernels, why = "tvm", "oneDNN takes none of this model's ops"  # no plugin to carry
    plugins = [_plugin(log)] if kernels == "onednn" else []

    def fill(tmp: Path) -> None:
        import shutil

        _export(executable, tmp / "model.so", export)
        for plugin in plugins:  # the artifact carries the kernels it calls
            shutil.copy2(plugin, tmp / plugin.name)

    record = {"name": "compile", "config": {"target": spec, "tuned": tune is not None, "int8": bool(int8),
                                            "tune_trials": tune.trials if tune else 0,
                                            "precision": config.precision,
                                            "cuda_graph": config.cuda_graph and spec.get("kind") == "cuda",
                                            "kernels": config.kernels,
                                            "fast_math": config.fast_math and spec.get("kind") == "llvm",
                                            **({"input_shape": shapes} if config.input_shape else {})},
              "metrics": {"int8_ops": rewritten, "kernels": kernels, "kernels_why": why, **details}}
    names = [p.name for p in plugins]
    extra = {"plugins": names} if names else {}
    needs = required_cpu_features(spec)
    if needs:  # a CPU without one of these refuses to load the library (runtimes.cpu_features)
        extra["cpu_features"] = needs
    artifact = write_artifact(out, fill, format="tvm", files=["model.so", *names], inputs=inputs,
                              outputs=outputs, target=spec, history=[*history, record],
                              extra=extra or None)
    return StepResult(artifact, record, history)


def _export(executable, path: Path, export: dict) -> None:
    # Debug sections are a third of an untuned int8 library and of no use on a device.
    executable.export_library(str(path), options=["-Wl,--strip-debug"], **export)


def _plugin(log) -> Path:
    from .native_build import onednn_plugin

    return onednn_plugin(progress=log)


def kernel_source(spec: dict, config: BuildConfig) -> tuple[str, str]:
    """(``tvm`` | ``onednn`` | ``measure``, why) for a build: what ``config.kernels`` means on
    ``spec`` and this machine."""
    if config.kernels == "tvm":
        return "tvm", "asked for"
    if config.kernels == "onednn":
        return "onednn", "asked for"
    if config.precision == "bf16":  # only oneDNN's kernels compute in bf16 (check_precision)
        from .native_build import onednn_available

        missing = onednn_available()
        if missing:
            raise InputError(f"precision 'bf16' runs on oneDNN's kernels, which cannot be built here: {missing}")
        return "onednn", "bf16 runs on oneDNN's kernels"
    if not is_x86_cpu(spec):
        return "tvm", f"oneDNN runs on x86-64 CPUs; the target is {spec.get('kind')}"
    from .native_build import onednn_available

    missing = onednn_available()
    if missing:
        return "tvm", missing
    if config.tune is None:
        return "onednn", "untuned: TVM's own CPU kernels are two orders of magnitude slower"
    import platform

    if (spec.get("mtriple") or "x86_64").split("-")[0] != platform.machine():
        return "onednn", "tuned, but the target cannot run on this host to compare"
    return "measure", ""


def _build_with_kernels(model, mod, spec, config, inputs, outputs, export, log, int8):
    """Compile ``mod`` at ``config.precision`` (fp32, fp16 or bf16) with the kernels
    ``config.kernels`` means here: (executable, details, kernels, why)."""
    kernels, why = kernel_source(spec, config)
    if kernels == "measure":
        executable, details, kernels, why = _faster_of_both(mod, spec, config, inputs, outputs, export,
                                                            log, int8)
    elif config.kernels == "auto" and kernels == "onednn" and config.precision != "bf16":
        # (a bf16 build that falls back to TVM's kernels would be an fp32 build in disguise)
        executable, details, kernels, why = _onednn_or_tvm(mod, spec, config, log, why, int8)
    else:
        executable, details = compile_module(mod, spec, config, log, kernels=kernels, int8=int8)
    if config.precision == "bf16" and not details.get("bf16_ops") and not details.get("int8_ops"):
        # (an int8 model's convs compute in int8: bf16 is for those kept in float, if any)
        raise InputError(f"precision 'bf16': no conv or matmul of {str(model)!r} runs on oneDNN (none, or all "
                         "too small to repay a call), so nothing would compute in bf16; build it with precision fp32")
    return executable, details, kernels, why


def bf16_unavailable(spec: dict, config: BuildConfig, int8: bool) -> str | None:
    """Why ``precision: auto`` cannot consider bf16 for this build (None: it can).

    >>> bf16_unavailable({"kind": "cuda"}, BuildConfig(target="cpu", precision="auto"), False)
    "precision auto chooses between fp32 and bf16 on x86-64 CPU targets; this target is 'cuda'"
    """
    import platform

    from .targets import isa_features

    if not is_x86_cpu(spec):
        return f"precision auto chooses between fp32 and bf16 on x86-64 CPU targets; this target is {spec.get('kind')!r}"
    if int8:
        return "an int8 model computes its convs and matmuls in int8"
    if CPU_PRECISION_FEATURE["bf16"][1] not in isa_features(spec):
        return "the target's CPU has no avx512_bf16"
    if config.kernels == "tvm":
        return "kernels 'tvm' has no bf16 path"
    if (spec.get("mtriple") or "x86_64").split("-")[0] != platform.machine():
        return "the target cannot run on this host to compare"
    from .native_build import onednn_available

    return onednn_available()


def _fp32_or_bf16(model, mod, spec, config, inputs, outputs, export, log, int8):
    """``precision: auto``: build fp32 and, where bf16 can run here, bf16; time both on this host
    and keep bf16 when it is ``AUTO_BF16_MIN_SPEEDUP`` faster with every output within
    ``AUTO_BF16_MIN_COSINE`` of fp32's. (executable, details, kernels, why); details carry
    ``precision`` and ``precision_why``."""
    import dataclasses
    import tempfile

    from edgeopt.runtimes.tvm_runner import TvmRunner

    fp32_config = dataclasses.replace(config, precision="fp32")
    fp32 = _build_with_kernels(model, mod, spec, fp32_config, inputs, outputs, export, log, int8)
    unavailable = bf16_unavailable(spec, config, bool(int8))
    bf16 = None
    if unavailable is None:
        try:
            bf16 = _build_with_kernels(model, mod, spec, dataclasses.replace(config, precision="bf16"), inputs,
                                       outputs, export, log, int8)
        except InputError as e:  # nothing of this model would compute in bf16
            unavailable = str(e).split("; build it")[0]
    if bf16 is None:
        return _with_precision(fp32, "fp32", unavailable)
    with tempfile.TemporaryDirectory(prefix="edgeopt-precision-") as tmp:
        runners = {}
        for name, (executable, details, kernels, _) in (("fp32", fp32), ("bf16", bf16)):
            library = Path(tmp) / f"{name}.so"
            _export(executable, library, export)
            runners[name] = TvmRunner(library, inputs, outputs, plugins=[_plugin(log)] if kernels == "onednn" else [])
        x = runners["fp32"].example_inputs()
        rounds: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(3):  # interleaved, so a change of load hits both
            for name, runner in runners.items():
                rounds[name].append(runner.benchmark(x, warmup=3, repeat=20).latency.median_ms)
        times = {name: float(sorted(r)[1]) for name, r in rounds.items()}
        results = {name: runner.run(x) for name, runner in runners.items()}
    cosine = min(_cosine(b, a) for a, b in zip(results["fp32"], results["bf16"]))
    speedup = times["fp32"] / times["bf16"]
    measured = f"bf16 {times['bf16']:.3f} ms, fp32 {times['fp32']:.3f} ms on this host; bf16 outputs within cosine {cosine:.5f} of fp32's"
    log(f"precision auto: {measured}")
    if speedup >= AUTO_BF16_MIN_SPEEDUP and cosine >= AUTO_BF16_MIN_COSINE:
        chosen, line = bf16, f"bf16 {speedup:.2f}x faster ({measured})"
    elif cosine < AUTO_BF16_MIN_COSINE:
        chosen, line = fp32, f"bf16 strays from fp32 (cosine {cosine:.5f} < {AUTO_BF16_MIN_COSINE}; {measured})"
    else:
        chosen, line = fp32, f"bf16 not {AUTO_BF16_MIN_SPEEDUP}x faster ({measured})"
    executable, details, kernels, why = _with_precision(chosen, "bf16" if chosen is bf16 else "fp32", line)
    return executable, {**details, "precision_times_ms": times}, kernels, why


def _with_precision(built, precision: str, why: str):
    executable, details, kernels, kernels_why = built
    return executable, {**details, "precision": precision, "precision_why": why}, kernels, kernels_why


def _cosine(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:  # an output that became all zeros agrees only with zeros
        return 1.0 if na == nb else 0.0
    return float(a @ b) / (na * nb)


def _onednn_or_tvm(mod, spec, config, log, why, int8):
    """``kernels: auto`` chose oneDNN: build with it, and when that build fails, with TVM's
    kernels (``auto`` is never worse than ``tvm``); the record's ``kernels_why`` and
    ``kernel_fallback`` say why. (executable, details, kernels, why)."""
    try:
        executable, details = compile_module(mod, spec, config, log, kernels="onednn", int8=int8)
        return executable, details, "onednn", why
    except InputError:
        raise
    except Exception as e:
        line = f"the oneDNN build failed ({error_summary(e)}); built with TVM's kernels"
        log(f"kernels fallback: {line}")
    executable, details = compile_module(mod, spec, config, log, kernels="tvm", int8=int8)
    return executable, {**details, "kernel_fallback": line}, "tvm", line


def _faster_of_both(mod, spec, config, inputs, outputs, export, log, int8):
    """Build ``mod`` with TVM's tuned kernels and with oneDNN's, time both here, keep the faster:
    (executable, details, kernels, why). A build that fails leaves the other (the record's
    ``kernel_fallback`` says why); both failing raises the TVM build's error."""
    import tempfile

    from edgeopt.runtimes.tvm_runner import TvmRunner

    built, times, failed = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="edgeopt-kernels-") as tmp:
        for kernels in ("tvm", "onednn"):
            try:
                executable, details = compile_module(mod, spec, config, log, kernels=kernels, int8=int8)
            except InputError:
                raise
            except Exception as e:
                failed[kernels] = e
                log(f"kernels fallback: the {kernels} build failed ({error_summary(e)})")
                continue
            library = Path(tmp) / f"{kernels}.so"
            _export(executable, library, export)
            plugins = [_plugin(log)] if kernels == "onednn" else []
            runner = TvmRunner(library, inputs, outputs, plugins=plugins)
            times[kernels] = runner.benchmark(runner.example_inputs(), warmup=5, repeat=30).latency.median_ms
            built[kernels] = (executable, details)
            log(f"kernels {kernels}: {times[kernels]:.3f} ms")
    if not built:
        raise failed["tvm"]
    best = min(times, key=times.get)
    executable, details = built[best]
    # the tuning record that matters is the TVM build's: it is what the database learned
    details = {**details, "tuning": built.get("tvm", built[best])[1].get("tuning")}
    if failed:
        (name, e), = failed.items()
        line = f"the {name} build failed ({error_summary(e)}); built with {best}'s kernels"
        return executable, {**details, "kernel_fallback": line, "kernel_times_ms": times}, best, line
    others = ", ".join(f"{k} {v:.3f} ms" for k, v in times.items())
    return executable, {**details, "kernel_times_ms": times}, best, f"faster on this host ({others})"


def cuda_pipeline(target, tensor_cores: bool):
    """TVM's CUDA pipeline; with ``tensor_cores`` every fp16 GEMM-like kernel (NHWC convs
    included) is tried with dlight's tensor-core rule first. The stock ``Matmul`` rule uses tensor
    cores only when every GEMM extent exceeds 64, which leaves out ResNet's 64-channel convs and
    its 7x7 stage; the tensor-core rule pads those to its 128-wide tiles instead."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cuda import pipeline as cuda
    from tvm.s_tir import dlight as dl
    from tvm.s_tir.dlight.gpu.matmul import MatmulTensorization

    if not tensor_cores:
        return cuda.get_default_pipeline(target)

    class TensorCoreGemm(MatmulTensorization):
        """The tensor-core rule for fp16 GEMM-like kernels only; anything else goes on to the
        next rule (the stock rule asserts on reductions that are not GEMMs)."""

        def apply(self, func, target, tunable):
            try:
                return super().apply(func, target, tunable)
            except Exception:  # not a GEMM, or shapes the rule cannot tile: the next rule decides
                return None

    legalize = [
        relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR(),
        dl.ApplyDefaultSchedule(TensorCoreGemm(), dl.gpu.Matmul(), dl.gpu.GEMV(),
                                dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback())]

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod, _ctx):
        with target:
            return tvm.transform.Sequential(
                cuda.library_dispatch_passes(target) + legalize + cuda.dataflow_lower_passes(target)
                + cuda.finalize_passes(target))(mod)

    return _pipeline


def compile_module(mod, spec: dict, config: BuildConfig, progress: Progress = None, tensor_cores: bool | None = None,
                   kernels: str = "tvm", int8: bool = False):
    """Lower and compile ``mod`` (``lower_and_compile``); on a cuda target, a build whose NHWC
    convs fail to compile is built again with every conv in the model's NCHW (slower, but it
    builds), and ``details["layout_fallbacks"]`` says so."""
    log = reporter(progress)
    if spec.get("kind") != "cuda":
        return lower_and_compile(mod, spec, config, log, tensor_cores, kernels, int8)
    from edgeopt.core.errors import CheckFailed  # a tuning failure is not the layout's

    try:
        return lower_and_compile(mod, spec, config, log, tensor_cores, kernels, int8)
    except (InputError, CheckFailed):
        raise
    except Exception as e:  # a schedule TVM cannot lower for some NHWC conv
        line = f"NHWC convs failed to build for cuda ({error_summary(e)}); every conv kept NCHW"
        log(f"layout fallback: {line}")
        executable, details = lower_and_compile(mod, spec, config, log, tensor_cores, kernels, int8,
                                                nhwc_on_cuda=False)
        details["layout_fallbacks"] = [*details.get("layout_fallbacks", []), line]
        return executable, details


def lower_and_compile(mod, spec: dict, config: BuildConfig, progress: Progress = None, tensor_cores: bool | None = None,
                      kernels: str = "tvm", int8: bool = False, nhwc_on_cuda: bool = True):
    """Lower a Relax module imported from ONNX for ``spec``: (executable, details), where details
    holds ``tuning`` (a summary) when tuned, ``library_ops`` when ``kernels`` is ``onednn``, and
    ``int8_ops`` (ops computed in integers) when ``int8``: QDQ chains become oneDNN int8 calls,
    or TVM int8 arithmetic (``edgeopt.compile.int8_rewrite``) where oneDNN does not take them.

    The one compile path of ``build`` (and of benchmarks that build the same way with the weights
    as inputs): inference-only decompositions, convs and matmuls to oneDNN when ``kernels`` is
    ``onednn``, fp16 on cuda when asked, MetaSchedule schedules when ``config.tune`` is set (for
    what TVM keeps), CUDA graphs on cuda targets, then ``tvm.compile``. ``tensor_cores``
    (``None``: on for fp16 cuda builds) picks ``cuda_pipeline``'s tensor-core rule: ResNet-18
    fp16 on an H200 went from 1.62 to 0.80 ms with it (``benchmarks/cuda_latency.py``).
    """
    log = reporter(progress)
    import tvm
    from tvm import relax

    tune = config.tune
    details: dict = {}
    mod = relax.transform.DecomposeOpsForInference()(mod)
    details["int8_ops"] = 0
    if int8:
        from .int8_passthrough import int8_passthrough

        # before the offload matches its patterns: a reshape, transpose or gather between two
        # QDQ pairs of one scale moves the int8 tensor itself
        mod, details["int8_moves"] = int8_passthrough(mod)
    layout_fallbacks: list[str] = []
    if kernels == "onednn":
        from .onednn_offload import MIN_FLOPS, offload_to_onednn

        # kernels: auto keeps tiny convs and matmuls on TVM's kernels (a oneDNN call costs more)
        small: list[str] = []
        mod, details["library_ops"] = offload_to_onednn(
            mod, int8=bool(int8), target=tvm.target.Target(spec), fallbacks=layout_fallbacks,
            min_flops=MIN_FLOPS if config.kernels == "auto" else 0, kept_small=small,
            bf16=config.precision == "bf16")
        if small:
            details["small_ops_in_tvm"] = small
        if config.precision == "bf16":  # every float conv and matmul offloaded is a bf16 kernel
            details["bf16_ops"] = details["library_ops"]["conv2d"] + details["library_ops"]["matmul"]
        details["int8_ops"] = details["library_ops"]["conv2d_q"] + details["library_ops"]["matmul_q"]
    # TVM's tuned x86 convs in blocked layouts; int8 ones then keep uint8 activations (VNNI)
    blocked = kernels == "tvm" and tune is not None and tune.blocked_layout and is_x86_cpu(spec)
    if int8:
        from .int8_rewrite import rewrite_qdq_to_int8

        mod, rewritten = rewrite_qdq_to_int8(mod, keep_uint8=blocked)
        details["int8_ops"] += rewritten
        from .int8_lookup import int8_lookup_tables

        # what no int8 kernel took: each activation between two QDQ pairs, as a byte lookup
        mod, details["int8_lookup_tables"] = int8_lookup_tables(mod)
    cuda = spec.get("kind") == "cuda"
    if spec.get("kind") == "llvm" and config.fast_math:
        from .fast_math import fast_math_ops

        mod = fast_math_ops(mod)
    if config.precision == "fp16":
        # float32 accumulation keeps a 512-channel reduction within fp16's 11-bit mantissa
        try:
            mod = relax.transform.ToMixedPrecision(out_dtype="float32")(mod)
        except Exception as e:  # TVM's pass stops at some imported graphs (a Clip lowered to TIR)
            raise InputError(f"TVM's fp16 conversion (ToMixedPrecision) failed on this model: "
                             f"{last_line(e, 200)}; build it with precision fp32") from None
    if cuda and nhwc_on_cuda:
        # dlight (TVM's GPU schedules) has no conv rule: an NCHW conv falls to its Fallback
        # schedule, while an NHWC conv is an implicit GEMM its Matmul rule tiles through shared
        # memory (and tensor cores in fp16). ResNet-18 fp16 on an H200: 2.32 -> 1.47 ms.
        # Grouped convs (depthwise aside) stay NCHW: in NHWC dlight gives them a cross-thread
        # reduction that TVM's lowering rejects ("block group_conv2d_nhwc needs cross-thread
        # reduction"); ops TVM cannot lower in NHWC (transposed convs) keep NCHW as well.
        from .conv_layouts import convert_layouts, is_grouped_not_depthwise, nhwc_convs

        grouped = []

        def keep_nchw(call) -> bool:
            if is_grouped_not_depthwise(call):
                grouped.append(call)
                return True
            return False

        mod, kept = convert_layouts(mod, nhwc_convs("OHWI", keep=keep_nchw, conv1d=False),
                                    tvm.target.Target(spec))
        if grouped:
            kept.insert(0, "grouped convs kept NCHW on cuda (TVM's NHWC grouped conv needs a "
                           "cross-thread reduction its GPU lowering rejects)")
        layout_fallbacks += kept
    if layout_fallbacks:
        details["layout_fallbacks"] = layout_fallbacks
        for line in layout_fallbacks:
            log(f"layout fallback: {line}")
    tvm_target = tvm.target.Target(spec)
    if cuda:
        from .cuda_host import prepare_cuda_build

        prepare_cuda_build()
    # CPU builds keep the caller's PassContext; cuda ones add the CUDA-graph switch to it
    context = (tvm.transform.PassContext(opt_level=tvm.transform.PassContext.current().opt_level,
                                         config={"relax.backend.use_cuda_graph": config.cuda_graph})
               if cuda else contextlib.nullcontext())
    with tvm_target, context:
        # the CUDA compile callback reads the arch from the current target
        if tune is not None:
            from .tune import tune as run_tuning
            from .tuning_db import canonical_block_names

            if blocked:
                from .blocked_layout import BlockedLayoutUnsupported, legalize_blocked_convs, to_blocked_layout

                try:
                    mod, details["blocked_convs"] = to_blocked_layout(mod)
                    mod = legalize_blocked_convs()(mod)
                except BlockedLayoutUnsupported as e:
                    details["blocked_convs"], details["blocked_layout_skipped"] = 0, str(e)[:300]
                    log(f"blocked layouts skipped (TVM's layout conversion failed: {str(e)[:200]}); "
                        "convs stay NCHW")
            prepack = tune.weight_prepack and spec.get("kind") == "llvm"
            mod = tvm.transform.Sequential([
                relax.transform.CanonicalizeBindings(), relax.get_pipeline("zero"),
                # Marks weight buffers as free to re-layout, so schedules may pick a blocked layout.
                *([relax.transform.AttachAttrLayoutFreeBuffers()] if prepack else [])])(mod)
            if blocked and prepack:
                from .blocked_layout import keep_int8_weight_layout

                mod = keep_int8_weight_layout(mod)
            # kernels shared with other models must carry the same block names in the database
            mod = canonical_block_names(mod)
            db, details["tuning"] = run_tuning(mod, spec, tune, log)
            mod = relax.transform.MetaScheduleApplyDatabase(str(db))(mod)
            if prepack:
                # The weights are constants of the module, so the layout transforms split out of
                # the kernels fold into the stored weights: the artifact keeps its interface.
                mod = tvm.transform.Sequential([relax.transform.SplitLayoutRewritePreproc(),
                                                relax.transform.FoldConstant()])(mod)
        if tensor_cores is None:
            tensor_cores = config.precision == "fp16"
        pipeline = cuda_pipeline(tvm_target, tensor_cores) if cuda else "default"
        executable = tvm.compile(mod, target=tvm_target, relax_pipeline=pipeline)
    return executable, details


def describe(metrics: dict, config: dict) -> list[str]:
    """What a compile record says, as the report says it (kernels and why, oneDNN calls, int8
    ops, fallbacks, tuning).

    >>> describe({"kernels": "onednn", "kernels_why": "untuned", "int8_ops": 4}, {})
    ['kernels onednn (untuned)', '4 int8 ops']
    """
    m, parts = metrics, []
    if m.get("kernels"):
        parts.append(f"kernels {m['kernels']}" + (f" ({m['kernels_why']})" if m.get("kernels_why") else ""))
    library = {op: n for op, n in (m.get("library_ops") or {}).items() if n}
    if library:
        parts.append("oneDNN calls: " + ", ".join(f"{op} {n}" for op, n in library.items()))
    if m.get("int8_ops"):
        parts.append(f"{m['int8_ops']} int8 ops")
    if m.get("precision_why"):
        parts.append(f"precision {m['precision']} ({m['precision_why']})")
    if m.get("int8_lookup_tables"):
        parts.append(f"{m['int8_lookup_tables']} int8 activations as lookup tables")
    if m.get("int8_moves"):
        parts.append(f"{m['int8_moves']} moves on int8 data")
    if m.get("bf16_ops"):
        parts.append(f"{m['bf16_ops']} bf16 ops")
    if m.get("small_ops_in_tvm"):
        small = m["small_ops_in_tvm"]
        parts.append(f"{len(small) if isinstance(small, (list, dict)) else small} small ops on TVM's kernels")
    for line in [m.get("kernel_fallback"), *(m.get("layout_fallbacks") or [])]:
        if line:
            parts.append(f"fallback: {line}")
    if m.get("tuning") or config.get("tuned"):
        parts.append("tuned")
    return parts
