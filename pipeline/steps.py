"""The step registry: the one place that maps a step name to its config class and function.

The recipe loader (``edgeopt.pipeline.recipe``), the study (``edgeopt.pipeline.study``) and the
CLI (``edgeopt compress STEP`` and ``edgeopt compile``, whose options are generated from the
config's fields) all look steps up here and nowhere else; the report describes a step's record
with its registered ``describe``. A ``Step`` is a step name with its validated config, built once
when a recipe is read; the runner applies it with ``apply_step``.

Levels say where a step sits in a variant: ``torch`` steps (module in, module out) come first,
then the variant is exported, then at most one final step: an ``onnx`` step (ONNX in, ONNX out)
or a ``torch-to-onnx`` step (the variant's module in, an ONNX artifact out: ``qat`` trains the
module and writes the quantized ONNX itself). Two more steps every study applies itself, never
listed in a recipe's variants: ``export`` (level ``export``: each variant's module to ONNX, parity
checked) and ``compile`` (level ``compile``: an ONNX model to a TVM artifact, once per ``tvm``
target; the target's keys are ``BuildConfig``'s fields, ``tune_<field>`` for its ``TuneConfig``).

Example:
    >>> from edgeopt.pipeline.steps import STEPS, make_step
    >>> sorted(STEPS)
    ['compile', 'distill', 'export', 'lowrank', 'prune', 'qat', 'quantize']
    >>> step = make_step("prune", {"amount": 0.5})
    >>> step.config.amount, step.kind.level
    (0.5, 'torch')
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, Callable

from edgeopt.core.config import config_from_flat, flat_fields, flat_params
from edgeopt.core.errors import InputError


@dataclass(frozen=True)
class StepData:
    """What a study hands to steps: the example input, the task, the fp32 teacher, options."""

    example: Any
    task: Any
    teacher: Any = None
    nproc: int = 1
    progress: Any = None


@dataclass(frozen=True)
class StepKind:
    """One registered step.

    Attributes:
        name: the name users read and write: recipes, the command line, history records, the report.
        module: the module that holds the step's config class, its function and its
            ``describe(metrics, config) -> list[str]`` (the phrases the report shows for a record
            of the step); imported on first use, so that reading a recipe does not import torch.
        config_name: the config class in ``module``.
        level: where the step sits in a variant (``LEVELS``, the module docstring).
        summary: one line for ``--help`` and the docs.
        feed: the keyword arguments the step takes from a ``StepData``.
        function_name: the function in ``module`` (default: ``name``).
    """

    name: str
    module: str
    config_name: str
    level: str
    summary: str
    feed: Callable[[Any, StepData], dict]
    function_name: str = ""

    @property
    def config(self) -> type:
        return _resolve(self.module, self.config_name)

    @property
    def final(self) -> bool:
        """Whether the step ends a variant in an ONNX artifact (at most one per variant)."""
        return self.level in ("onnx", "torch-to-onnx")

    @property
    def in_variants(self) -> bool:
        """Whether a recipe lists the step in a variant (export and compile it does not: every
        variant is exported, and a ``tvm`` target's keys are compile's config)."""
        return self.level in VARIANT_LEVELS

    @property
    def function(self) -> Callable:
        return _resolve(self.module, self.function_name or self.name)

    @property
    def describe(self) -> Callable[[dict], list]:
        return _resolve(self.module, "describe")


def _resolve(module: str, attr: str):
    return getattr(importlib.import_module(module), attr)


def _example_and_calibration(config, data: StepData) -> dict:
    return {"example_inputs": data.example, "calibration": data.task.calib.x}


def _distill_data(config, data: StepData) -> dict:
    return {"data": data.task, "teacher": data.teacher, "nproc": data.nproc, "progress": data.progress}


def quantize_eval_data(task):
    """What a quantize budget is judged on for ``task``: a labelled task itself (its validation
    split and its metric); without labels, its validation inputs with the task's declared
    outputs (``output_quality.DeclaredOutputs``: each output by its kind, as the report judges
    it), or the bare inputs when it declares none."""
    if task.labelled:
        return task
    if task.outputs:
        from .output_quality import DeclaredOutputs

        return DeclaredOutputs(task.val.x, tuple(task.outputs), task.metric in ("top1", "agreement"))
    return task.val.x


def _quantize_data(config, data: StepData) -> dict:
    task = data.task
    eval_data = quantize_eval_data(task) if config.has_budget else None
    return {"calibration": task.calib, "eval_data": eval_data, "progress": data.progress}


def _qat_data(config, data: StepData) -> dict:
    return {"data": data.task, "teacher": data.teacher, "calibration": data.task.calib.x,
            "example_inputs": data.example, "progress": data.progress}


def _nothing(config, data: StepData) -> dict:
    return {}


def _example(config, data: StepData) -> dict:
    return {"example_inputs": data.example}


STEPS: dict[str, StepKind] = {kind.name: kind for kind in (
    StepKind("lowrank", "edgeopt.compress.lowrank", "LowRankConfig", "torch",
             "low-rank factorization of Linear and convolution layers (SVD, Tucker-2, CP)",
             _example_and_calibration),
    StepKind("prune", "edgeopt.compress.prune", "PruneConfig", "torch",
             "structured (channels removed) or unstructured (weights zeroed) pruning", _example_and_calibration),
    StepKind("distill", "edgeopt.compress.distill", "DistillConfig", "torch",
             "knowledge distillation from the fp32 model (fine-tuning when alpha=0)", _distill_data),
    StepKind("quantize", "edgeopt.compress.quantize", "QuantizeConfig", "onnx",
             "int8 post-training quantization of the exported ONNX model", _quantize_data),
    StepKind("qat", "edgeopt.compress.qat", "QATConfig", "torch-to-onnx",
             "quantization-aware training (learned int8 scales), written as QDQ ONNX", _qat_data),
    StepKind("export", "edgeopt.compile.export", "ExportConfig", "export",
             "the variant's module to ONNX, checked against torch on the same inputs", _example),
    StepKind("compile", "edgeopt.compile.tvm_build", "BuildConfig", "compile",
             "an ONNX model compiled by TVM for a target (a tvm target of a recipe)", _nothing,
             function_name="build"),
)}

#: Variant levels first (``torch``, then one ``onnx`` or ``torch-to-onnx`` step), then the two
#: steps every study applies itself: ``export`` (torch to ONNX) and ``compile`` (ONNX to a TVM
#: artifact, once per ``tvm`` target).
LEVELS = ("torch", "onnx", "torch-to-onnx", "export", "compile")
VARIANT_LEVELS = LEVELS[:3]


@dataclass(frozen=True)
class Step:
    """A step name with its validated config (and the recipe line it came from, for messages)."""

    name: str
    config: Any
    line: int = 0

    @property
    def kind(self) -> StepKind:
        return STEPS[self.name]

    @property
    def params(self) -> dict:
        """The config's fields that differ from their defaults (what the recipe said)."""
        return flat_params(self.config)

    def to_dict(self) -> dict:
        return {self.name: self.params}


def kind(name: str) -> StepKind:
    """The registered step ``name``; ``InputError`` listing the steps otherwise."""
    if name not in STEPS:
        raise InputError(f"unknown step {name!r}; expected one of {', '.join(STEPS)}")
    return STEPS[name]


def make_config(name: str, params: dict):
    """Build (and so validate) the config of step ``name`` from a mapping of its fields."""
    cls = kind(name).config
    fields = dict(flat_fields(cls))
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise InputError(f"unknown parameter(s) {unknown}; expected some of {', '.join(sorted(fields))}")
    missing = [n for n, f in fields.items() if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and n not in params]
    if missing:
        raise InputError(f"missing required parameter(s) {missing}")
    try:
        return config_from_flat(cls, params)
    except InputError:
        raise
    except (TypeError, ValueError) as e:
        raise InputError(str(e)) from None


def make_step(name: str, params: dict | None = None, line: int = 0) -> Step:
    """A ``Step`` with its config built now: a bad value fails before any work starts."""
    return Step(name, make_config(name, dict(params or {})), line)


def check_order(steps: list[Step]) -> None:
    """Torch-level steps first, then at most one final step (``onnx`` or ``torch-to-onnx``
    level); ``InputError`` otherwise."""
    seen_onnx = None
    for s in steps:
        if s.kind.final:
            if seen_onnx is not None:
                raise InputError(f"two ONNX-level steps ({seen_onnx!r} and {s.name!r}); at most one is allowed")
            seen_onnx = s.name
        elif seen_onnx is not None:
            torch_steps = ", ".join(n for n, k in STEPS.items() if k.level == "torch")
            raise InputError(f"step {s.name!r}{f' (line {s.line})' if s.line else ''} comes after "
                             f"{seen_onnx}; torch-level steps ({torch_steps}) must come first")


def apply_step(step: Step, model: Any, data: StepData, **options):
    """Run ``step`` on ``model`` (a module, an ONNX artifact or a ``StepResult``) with the inputs
    its registry entry takes from ``data``; ``options`` (e.g. ``out=``) are passed through."""
    k = step.kind
    return k.function(model, step.config, **{**k.feed(step.config, data), **options})
