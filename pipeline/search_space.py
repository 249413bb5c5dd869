"""What a search may try and what it must meet: the recipe's ``search`` section as a space of
registry steps, and the constraints on the chosen variant.

``SearchSpace`` validates the ``search`` section (the recipe loader builds it when a recipe is
read); ``suggest`` asks an Optuna trial for one point of it, ``trial_steps`` turns a point into
registry steps in a valid order, ``variant_name`` names it, ``space_points`` lists every point
and ``warm_start_points`` finds the recipe's own variants among them. ``edgeopt.pipeline.search``
drives the optimizer over this space.

Example:
    >>> from edgeopt.pipeline.search_space import SearchConstraints, SearchSpace, trial_steps, variant_name
    >>> SearchConstraints(max_accuracy_drop=0.01).max_accuracy_drop
    0.01
    >>> SearchConstraints(max_size_mb=-1)
    Traceback (most recent call last):
    ...
    edgeopt.core.errors.InputError: max_size_mb must be a number >= 0, got -1.0
    >>> space = SearchSpace.from_dict({"prune": [0, 0.5], "quantize": ["none", "minmax"]})
    >>> space.prune
    (0.0, 0.5)
    >>> params = {"runtime": "onnxruntime", "prune": 0.5, "quantize": "minmax"}
    >>> variant_name(params, trial_steps(params, space, labelled_top1=False))
    'prune0.5+minmax'
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from edgeopt.core.config import check_field_types
from edgeopt.core.errors import InputError

from .steps import check_order, make_step

#: Quantization choices a search may try (``quantize`` key of the ``search`` section):
#: name -> QuantizeConfig parameters; "none" leaves the model in float, "qat" trains int8 scales.
QUANTIZE_CHOICES = {
    "none": None,
    "mean_minmax": {"method": "mean_minmax", "per_channel": True},
    "minmax": {"method": "minmax", "per_channel": True},
    "entropy": {"method": "entropy", "per_channel": True},
    "percentile": {"method": "percentile", "per_channel": True},
    "minmax+eq": {"method": "minmax", "per_channel": True, "equalize": True, "bias_correction": True},
    "entropy+eq": {"method": "entropy", "per_channel": True, "equalize": True, "bias_correction": True},
    "qat": None,
}
SAMPLERS = ("tpe", "nsga2")
#: Runtimes that quantize with their own quantizer (ExecuTorch: PT2E with XNNPACK's symmetric
#: per-channel quantizer): a quantize choice there means "int8", whatever its method, so the
#: search names it ``int8``, builds it once and records the default quantize step, never a
#: method or an equalization that was not applied.
OWN_INT8_RUNTIMES = ("executorch",)


def check_number(name: str, value, low: float = 0.0, high: float | None = None) -> float:
    """``value`` as a float when it is a finite number in ``[low, high]``, else an ``InputError``
    naming ``name``.

    >>> check_number("budget_minutes", 5), check_number("prune_margin", 0.5, 0.0, 1.0)
    (5.0, 0.5)
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < low or (high is not None and value > high):
        bound = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise InputError(f"{name} must be a number {bound}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class SearchConstraints:
    """What the chosen variant must meet; ``None`` leaves an objective unconstrained.

    Attributes:
        max_accuracy_drop: largest drop of quality against the fp32 model, as a fraction (0.01 =
            1 point): top-1 accuracy on labelled classification tasks, else 1 - agreement.
        max_size_mb: largest artifact size in MB (10^6 bytes).
        max_latency_ms: largest median latency in ms on the target.
    """

    max_accuracy_drop: float | None = None
    max_size_mb: float | None = None
    max_latency_ms: float | None = None

    def __post_init__(self):
        check_field_types(self)
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None:
                check_number(f.name, v, 0.0, 1.0 if f.name == "max_accuracy_drop" else None)

    def violations(self, latency_ms: float | None, size_mb: float | None, drop: float | None) -> list[float]:
        """One value per constraint (<= 0: met): latency and size relative to their bound, the
        accuracy drop in fraction points; an unknown value (a pruned trial) counts as met."""
        out = []
        for bound, value, relative in ((self.max_latency_ms, latency_ms, True),
                                       (self.max_size_mb, size_mb, True),
                                       (self.max_accuracy_drop, drop, False)):
            if bound is None:
                continue
            if value is None:
                out.append(0.0)
            elif relative:
                out.append(value / bound - 1.0 if bound > 0 else (value if value > 0 else 0.0))
            else:
                out.append(value - bound)
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SearchSpace:
    """The recipe's ``search`` section: what a search may try (docs/recipes.md lists each key).

    Attributes:
        prune: structured pruning amounts to try (0: no pruning).
        prune_scope: ``local`` or ``global`` (``PruneConfig.scope``).
        lowrank: ``LowRankConfig`` parameter mappings to try, each as one choice, only on
            unpruned models ([] turns low-rank off).
        distill: ``DistillConfig`` parameters of the recovery step that follows pruning or
            low-rank on labelled classification tasks; ``false``: no recovery.
        quantize: the quantization choices (``QUANTIZE_CHOICES``: none, mean_minmax, minmax, entropy,
            percentile, minmax+eq, entropy+eq (cross-layer equalization and bias correction),
            qat (labelled tasks only)).
        qat: ``QATConfig`` parameters of the ``qat`` choice.
        sampler: ``tpe`` (multi-objective TPE, the default) or ``nsga2``.
        startup_trials: random trials before the sampler models the results.
        prune_margin: a trial whose torch-level drop exceeds ``max_accuracy_drop`` by this much
            (a fraction) is pruned before export, quantization and timing.
        warm_start: before sampling, enqueue the recipe's own ``variants`` (on each of its
            targets) that are points of this space, so that the hand-written variants are always
            measured and the sampler explores from them (``warm_start_points``).
        choose_tolerance: latencies within this fraction of the lowest feasible one count as
            equal when choosing: the chosen trial is the most accurate of those (timing noise
            must not buy a few microseconds with accuracy).
    """

    prune: tuple = (0.0, 0.25, 0.5, 0.75)
    prune_scope: str = "local"
    lowrank: tuple = ({"flops_budget": 0.5},)
    distill: dict | bool = field(default_factory=lambda: {"epochs": 2, "patience": None})
    quantize: tuple = ("none", "minmax", "entropy", "entropy+eq")
    qat: dict = field(default_factory=lambda: {"epochs": 1})
    sampler: str = "tpe"
    startup_trials: int = 8
    prune_margin: float = 0.02
    warm_start: bool = True
    choose_tolerance: float = 0.03

    def __post_init__(self):
        check_field_types(self)
        if not self.prune:
            raise InputError("prune must list at least one amount (0: no pruning)")
        object.__setattr__(self, "prune", tuple(check_number("a prune amount", a, 0.0, 0.99) for a in self.prune))
        if len(set(self.prune)) != len(self.prune):
            raise InputError(f"prune repeats an amount: {list(self.prune)}")
        if self.prune_scope not in ("local", "global"):
            raise InputError(f"prune_scope must be 'local' or 'global', got {self.prune_scope!r}")
        for entry in self.lowrank:
            if not isinstance(entry, dict):
                raise InputError(f"lowrank entries must be mappings of lowrank parameters, got {entry!r}")
            make_step("lowrank", entry)
        if self.distill is True:
            raise InputError("distill must be a mapping of distill parameters (epochs required) or false")
        if self.distill:
            make_step("distill", self.distill)
        if not self.quantize:
            raise InputError("quantize must list at least one choice, e.g. [none]")
        bad = [q for q in self.quantize if q not in QUANTIZE_CHOICES]
        if bad:
            raise InputError(f"unknown quantize choice(s) {bad}; expected some of {', '.join(QUANTIZE_CHOICES)}")
        if len(set(self.quantize)) != len(self.quantize):
            raise InputError(f"quantize repeats a choice: {list(self.quantize)}")
        make_step("qat", self.qat)
        if self.sampler not in SAMPLERS:
            raise InputError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.startup_trials < 0:
            raise InputError(f"startup_trials must be an integer >= 0, got {self.startup_trials!r}")
        check_number("prune_margin", self.prune_margin, 0.0, 1.0)
        check_number("choose_tolerance", self.choose_tolerance, 0.0, 1.0)

    @classmethod
    def from_dict(cls, d: dict | None) -> "SearchSpace":
        """Build from a recipe's ``search`` mapping; unknown keys are an ``InputError``."""
        d = dict(d or {})
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise InputError(f"unknown key(s) {unknown}; expected some of {', '.join(names)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


#: Keys of a recipe's ``search`` section (documented in docs/recipes.md).
SEARCH_KEYS = tuple(f.name for f in dataclasses.fields(SearchSpace))


# -- the space --------------------------------------------------------------------------------

def _amount(x: float) -> str:
    return f"{x:g}"


def suggest(trial, space: SearchSpace, runtimes: list[str], labelled_top1: bool) -> dict:
    """Ask ``trial`` for one point of ``space`` (conditional: low-rank only without pruning,
    quantization only off the torch runtime, qat only on labelled tasks)."""
    params: dict = {"runtime": trial.suggest_categorical("runtime", runtimes)}
    params["prune"] = trial.suggest_categorical("prune", list(space.prune))
    if params["prune"] == 0 and space.lowrank:
        params["lowrank"] = trial.suggest_categorical("lowrank", list(range(len(space.lowrank) + 1)))
    choices = [q for q in space.quantize if q != "qat" or labelled_top1]
    if params["runtime"] != "torch" and choices != ["none"]:
        params["quantize"] = trial.suggest_categorical("quantize", choices)
    return params


def trial_steps(params: dict, space: SearchSpace, labelled_top1: bool) -> list:
    """The registry steps of one point of the space, in a valid order."""
    steps = []
    if params.get("lowrank"):
        steps.append(make_step("lowrank", space.lowrank[params["lowrank"] - 1]))
    if params.get("prune"):
        steps.append(make_step("prune", {"amount": params["prune"], "scope": space.prune_scope}))
    if steps and space.distill and labelled_top1:
        steps.append(make_step("distill", space.distill))
    q = params.get("quantize", "none")
    if q == "qat":
        steps.append(make_step("qat", space.qat))
    elif QUANTIZE_CHOICES.get(q):
        steps.append(make_step("quantize", {**QUANTIZE_CHOICES[q], "debug_layers": 0}))
    check_order(steps)
    return runtime_steps(steps, params.get("runtime"))


def runtime_steps(steps: list, runtime: str | None) -> list:
    """``steps`` as ``runtime`` applies them: on a runtime with its own quantizer
    (``OWN_INT8_RUNTIMES``) a quantize step becomes the default one (its options do not apply)."""
    if runtime not in OWN_INT8_RUNTIMES:
        return steps
    return [make_step("quantize", {"debug_layers": 0}) if s.name == "quantize" else s for s in steps]


def variant_name(params: dict, steps: list) -> str:
    """A readable, unique name of a point: ``prune0.5+kd+entropy``, ``lowrank1``, ``fp32``."""
    parts = []
    if params.get("lowrank"):
        parts.append(f"lowrank{params['lowrank']}")
    if params.get("prune"):
        parts.append(f"prune{_amount(params['prune'])}")
    if any(s.name == "distill" for s in steps):
        parts.append("kd")
    if params.get("quantize", "none") != "none":
        parts.append("int8" if params.get("runtime") in OWN_INT8_RUNTIMES and params["quantize"] != "qat"
                     else params["quantize"])
    return "+".join(parts) or "fp32"


def space_points(space: SearchSpace, runtimes: list[str], labelled_top1: bool) -> list[dict]:
    """Every point of the space (the parameters ``suggest`` can answer), runtime-major."""
    choices = [q for q in space.quantize if q != "qat" or labelled_top1]
    points = []
    for runtime in runtimes:
        for amount in space.prune:
            lows = list(range(len(space.lowrank) + 1)) if amount == 0 and space.lowrank else [None]
            for low in lows:
                quants = choices if runtime != "torch" and choices != ["none"] else [None]
                if runtime in OWN_INT8_RUNTIMES:  # every method is the same int8 there: one point
                    first = next((q for q in quants if q not in ("none", "qat", None)), None)
                    quants = [q for q in quants if q in ("none", "qat", None, first)]
                for q in quants:
                    params = {"runtime": runtime, "prune": amount}
                    if low is not None:
                        params["lowrank"] = low
                    if q is not None:
                        params["quantize"] = q
                    points.append(params)
    return points


def steps_key(steps: list) -> str:
    """Compare step lists by what they do (the quantize debugger's ``debug_layers`` is not)."""
    out = []
    for s in steps:
        d = s.to_dict() if hasattr(s, "to_dict") else dict(s)
        (name, params), = d.items()
        params = {k: v for k, v in params.items() if not (name == "quantize" and k == "debug_layers")}
        out.append({name: params})
    return json.dumps(out, sort_keys=True, default=str)


def warm_start_points(variants: dict, space: SearchSpace, runtimes: list[str],
                      labelled_top1: bool) -> tuple[list[tuple[str, dict]], list[str]]:
    """The recipe's hand-written ``variants`` that are points of ``space``, on each runtime:
    ``([("recipe:<variant>", params), ...], [why each other one is left out])``, in the recipe's
    order (variant-major). A variant is a point when the steps the search would build for some
    parameters are the variant's steps (same parameters; the distillation the search adds after
    pruning or low-rank must be the recipe's); quantized variants are points only off torch
    (the recipe does not quantize on torch either)."""
    points = space_points(space, runtimes, labelled_top1)
    keyed = [(p, steps_key(trial_steps(p, space, labelled_top1))) for p in points]
    found, skipped = [], []
    for vname, steps in variants.items():
        off_torch = any(s.kind.level != "torch" for s in steps)
        for runtime in runtimes:
            if runtime == "torch" and off_torch:
                continue
            key = steps_key(runtime_steps(steps, runtime))
            match = next((p for p, k in keyed if p["runtime"] == runtime and k == key), None)
            if match is None:
                skipped.append(f"{vname} on {runtime}")
            else:
                found.append((f"recipe:{vname}", match))
    return found, skipped



def structure(params: dict) -> tuple[float, int]:
    """A point's torch-level structure, ``(prune amount, low-rank choice)``: what its torch-level
    steps (low-rank, pruning, distillation) are made of; quantization and runtime come after."""
    return float(params.get("prune") or 0.0), int(params.get("lowrank") or 0)


def stricter_lowrank(space: SearchSpace, choice: int) -> list[int]:
    """The low-rank choices (1-based, ``choice`` included) that cannot be met on a model where
    ``choice`` cannot: the same parameters with a ``flops_budget``/``params_budget`` no larger
    (a smaller budget asks for a smaller model from the same candidate ranks)."""
    entry = space.lowrank[choice - 1]
    out = [choice]
    for key in ("flops_budget", "params_budget"):
        if entry.get(key) is None:
            continue
        rest = {k: v for k, v in entry.items() if k != key}
        out += [j for j, other in enumerate(space.lowrank, 1)
                if j != choice and other.get(key) is not None and other[key] <= entry[key]
                and {k: v for k, v in other.items() if k != key} == rest]
    return sorted(out)
