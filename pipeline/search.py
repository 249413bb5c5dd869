"""Search under constraints: the best variant for a target that loses at most what the user allows.

``search(recipe, out, target=..., constraints=SearchConstraints(...))`` explores pruning amounts,
low-rank budgets, distillation recovery, quantization choices (post-training calibrations, the
accuracy transforms, QAT) and the recipe's runtimes, with three objectives: median latency (ms,
minimized), artifact size (MB, minimized) and quality (maximized: top-1 accuracy on a labelled
classification task, else top-1 agreement with the fp32 model on the task's held-out inputs).
The space comes from the recipe's optional ``search`` section (``SearchSpace``; every key in
docs/recipes.md).

Warm start (``warm_start``, on by default): the recipe's own ``variants`` that are points of the
space (``warm_start_points``) are enqueued before any sampled trial, so the hand-written points
are always measured; each trial records its ``origin`` (``recipe:<variant>`` or ``sampler``).

The optimizer is Optuna's multi-objective TPE (``TPESampler`` with ``constraints_func``):

- the space is small, categorical and conditional (low-rank is tried only without pruning,
  quantization only off the torch runtime), which TPE models directly; NSGA-II needs a
  population per generation (tens of trials) before selection starts to matter, more than a
  30-minute budget of minute-long trials affords (``sampler: nsga2`` is offered all the same);
- constraints are Optuna constraints (a value <= 0 is met), so infeasible trials steer the
  sampler away instead of being thrown out;
- hopeless trials are pruned: after the torch-level steps the model is scored (batched torch, a
  second or two); when its drop already exceeds ``max_accuracy_drop`` by ``prune_margin``,
  the trial is told ``PRUNED`` before export, quantization, build and timing.

Reuse and resumption: a trial is a list of registry steps (``make_step`` + ``check_order``) and
a recipe target, built and measured by the study runner (``edgeopt.pipeline.run._Study``):
torch-level step prefixes are kept on disk under ``OUT/work/<fingerprint>/cache`` (a pruned and
distilled model is trained once and quantized many ways, in this process or the next), finished
ONNX artifacts are reused, and latencies are cached in ``OUT/latency-cache.json`` per artifact
checksum, runtime, timing settings and machine fingerprint. Trials live in an Optuna journal
(``OUT/search.journal``); a re-run with the same recipe, constraints and seed loads it, keeps
the finished trials, marks a trial left running by a kill as failed and asks again. The sampler
is reseeded before every ask from (seed, finished trials), so a resumed search asks exactly what
an uninterrupted one would have asked. A trial that repeats finished parameters is answered from
the earlier trial, never measured twice.

Failures: a failed trial is told ``PRUNED`` with a huge constraint violation (Optuna's samplers
skip ``FAIL`` trials), so the sampler learns the region is bad; search.json lists it as
``failed`` with its ``error``. A failure in a torch-level step (a low-rank budget the model cannot
meet) removes that structure from the space, every quantization and runtime of it (and the
stricter budgets of the same low-rank config); a later failure removes its point
(``RuledOut``). The sampler is wrapped (``steered_sampler``) so it never proposes a removed
candidate; one asked anyway is answered from the failure in one log line, never built, and counts
toward ``trials``. ``max(10, candidates)`` asks in a row answered from earlier trials stop the search.

Output in ``OUT``: ``search.json`` (every trial: parameters, objectives, state, constraints met,
the Pareto set and the choice), ``chosen/`` (the chosen artifact folder, its manifest holding the
whole history), ``chosen-recipe.yaml`` (an ordinary recipe that ``edgeopt run`` reproduces it
with), and the report (``report.json``, ``report.md``, ``index.html`` with the trade-off plot
and ``progress.png``: objective values over trials). The chosen trial is the feasible one with
the highest quality among those within ``choose_tolerance`` (3%) of the lowest latency
(then lower latency, then smaller size).

Example:
    >>> from edgeopt.pipeline.search import SearchConstraints, SearchSpace
    >>> SearchConstraints(max_accuracy_drop=0.01).max_accuracy_drop
    0.01
    >>> SearchConstraints(max_size_mb=-1)
    Traceback (most recent call last):
    ...
    edgeopt.core.errors.InputError: max_size_mb must be a number >= 0, got -1.0
    >>> SearchSpace.from_dict({"prune": [0, 0.5], "quantize": ["none", "minmax"]}).prune
    (0.0, 0.5)
    >>> from edgeopt.pipeline.search import search  # doctest: +SKIP
    >>> r = search("benchmarks/search-fashion.yaml", "build/search", budget_minutes=10,  # doctest: +SKIP
    ...            constraints=SearchConstraints(max_accuracy_drop=0.01))
    >>> r.chosen["variant"], r.chosen["latency_ms"], r.paths["chosen"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgeopt.core.config import check_field_types
from edgeopt.core.config import flat_params
from edgeopt.core.errors import InputError
from edgeopt.core.files import write_json_atomic, write_text_atomic

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
JOURNAL, SEARCH_JSON, LATENCY_CACHE = "search.journal", "search.json", "latency-cache.json"


def _number(name: str, value, low: float = 0.0, high: float | None = None) -> float:
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
                _number(f.name, v, 0.0, 1.0 if f.name == "max_accuracy_drop" else None)

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
        from .steps import make_step

        check_field_types(self)
        if not self.prune:
            raise InputError("prune must list at least one amount (0: no pruning)")
        object.__setattr__(self, "prune", tuple(_number("a prune amount", a, 0.0, 0.99) for a in self.prune))
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
        _number("prune_margin", self.prune_margin, 0.0, 1.0)
        _number("choose_tolerance", self.choose_tolerance, 0.0, 1.0)

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


@dataclass
class SearchResult:
    """What ``search`` found: every trial, the Pareto set, the chosen trial (None when nothing
    met the constraints; ``closest`` then lists the nearest), the output paths."""

    trials: list
    pareto: list
    chosen: dict | None
    closest: list
    paths: dict
    ran: list = field(default_factory=list)        # trial numbers evaluated by this call
    steps_run: list = field(default_factory=list)  # torch-level steps computed by this call (not cached)
    stopped: str = ""

    @property
    def feasible(self) -> bool:
        return self.chosen is not None


# -- the space --------------------------------------------------------------------------------

def _fmt(x: float) -> str:
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
    from .steps import check_order, make_step

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
    return steps


def variant_name(params: dict, steps: list) -> str:
    """A readable, unique name of a point: ``prune0.5+kd+entropy``, ``lowrank1``, ``fp32``."""
    parts = []
    if params.get("lowrank"):
        parts.append(f"lowrank{params['lowrank']}")
    if params.get("prune"):
        parts.append(f"prune{_fmt(params['prune'])}")
    if any(s.name == "distill" for s in steps):
        parts.append("kd")
    if params.get("quantize", "none") != "none":
        parts.append(params["quantize"])
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
                for q in quants:
                    params = {"runtime": runtime, "prune": amount}
                    if low is not None:
                        params["lowrank"] = low
                    if q is not None:
                        params["quantize"] = q
                    points.append(params)
    return points


def _steps_key(steps: list) -> str:
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
    keyed = [(p, _steps_key(trial_steps(p, space, labelled_top1))) for p in points]
    found, skipped = [], []
    for vname, steps in variants.items():
        key = _steps_key(steps)
        off_torch = any(s.kind.level != "torch" for s in steps)
        for runtime in runtimes:
            if runtime == "torch" and off_torch:
                continue
            match = next((p for p, k in keyed if p["runtime"] == runtime and k == key), None)
            if match is None:
                skipped.append(f"{vname} on {runtime}")
            else:
                found.append((f"recipe:{vname}", match))
    return found, skipped


def space_size(space: SearchSpace, runtimes: list[str], labelled_top1: bool) -> int:
    structures = len([a for a in space.prune if a]) + ((1 + len(space.lowrank)) if 0.0 in space.prune else 0)
    quant = len([q for q in space.quantize if q != "qat" or labelled_top1])
    return sum(structures * (1 if r == "torch" else quant) for r in runtimes)


# -- failures: what they rule out, and a sampler that never proposes it again ----------------

#: The constraint violation a failed trial is told with (Optuna's TPE and NSGA-II rank infeasible
#: trials by their summed violation): worse than any measured one, so a failure is the worst
#: evidence the sampler holds about its region.
FAILED_VIOLATION = 1e9


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


@dataclass
class RuledOut:
    """The candidates that failures rule out, each mapped to the number of the trial that failed.

    ``structures``: torch-level structures a step failed on (``structure``): every quantization
    and runtime of one fails the same way (a low-rank budget the model cannot meet), so they are
    out of the space. ``points``: ``(variant, runtime)`` of failures after the torch-level steps
    (export, quantization, build, timing). Rebuilt from the journal's trials, so a resumed search
    rules out what the earlier run learned."""

    structures: dict = field(default_factory=dict)
    points: dict = field(default_factory=dict)

    @classmethod
    def from_trials(cls, trials) -> "RuledOut":
        ruled = cls()
        for t in sorted(trials, key=lambda t: t.number):
            attrs = t.user_attrs
            if "error" not in attrs or "repeat_of" in attrs:
                continue
            if attrs.get("removed"):
                for s in attrs["removed"]:
                    ruled.structures.setdefault((float(s["prune"]), int(s["lowrank"])), t.number)
            else:
                ruled.points.setdefault((attrs.get("variant"), attrs.get("runtime")), t.number)
        return ruled

    def covering(self, params: dict, vname: str) -> int | None:
        """The trial whose failure rules this point out, or None."""
        found = self.structures.get(structure(params))
        return found if found is not None else self.points.get((vname, params["runtime"]))

    def blocked(self, prefix: dict, candidates: list[tuple[dict, str]]) -> bool:
        """Whether every candidate ``(params, variant)`` that agrees with the partial parameters
        ``prefix`` is ruled out (a choice the sampler must not make)."""
        if not self.structures and not self.points:
            return False
        agreeing = [(p, v) for p, v in candidates if all(p.get(k) == x for k, x in prefix.items())]
        return bool(agreeing) and all(self.covering(p, v) is not None for p, v in agreeing)


def steered_sampler(base, blocked: Callable[[dict], bool], seed: int, draws: int = 5):
    """``base`` (Optuna's TPE or NSGA-II) made never to propose a ruled-out candidate.

    Optuna's categorical distributions cannot change during a study (so a failed choice cannot be
    taken out of them), and TPE's first ``n_startup_trials`` are uniform draws that no failure
    informs: each parameter the base sampler draws into a region where ``blocked(partial params)``
    holds is drawn again (up to ``draws`` times, following the base sampler's model), then
    chosen uniformly (seeded by ``seed``) among the choices still open. A relative proposal
    (NSGA-II's crossover) that leads into such a region is dropped for independent draws."""
    import random

    from optuna.samplers import BaseSampler

    class SteeredSampler(BaseSampler):
        def __init__(self):
            self.base, self.rng = base, random.Random(seed)

        def infer_relative_search_space(self, study, trial):
            return self.base.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            params = self.base.sample_relative(study, trial, search_space)
            return {} if params and blocked({**trial.params, **params}) else params

        def sample_independent(self, study, trial, param_name, param_distribution):
            value = self.base.sample_independent(study, trial, param_name, param_distribution)
            for _ in range(draws - 1):
                if not blocked({**trial.params, param_name: value}):
                    return value
                value = self.base.sample_independent(study, trial, param_name, param_distribution)
            if blocked({**trial.params, param_name: value}):
                open_ = [c for c in getattr(param_distribution, "choices", ())
                         if not blocked({**trial.params, param_name: c})]
                if open_:
                    value = self.rng.choice(open_)
            return value

        def before_trial(self, study, trial):
            self.base.before_trial(study, trial)

        def after_trial(self, study, trial, state, values):
            self.base.after_trial(study, trial, state, values)

        def reseed_rng(self):
            self.base.reseed_rng()

    return SteeredSampler()


# -- helpers ----------------------------------------------------------------------------------

def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _quality(task, outputs, reference) -> tuple[float, float | None]:
    """(quality, accuracy): top-1 accuracy on labelled top-1 tasks, else agreement with fp32."""
    from .measure import scores

    s = scores(task, outputs, reference)
    if task.labelled and task.metric == "top1":
        return s["accuracy"], s["accuracy"]
    return s["agreement"], s.get("accuracy")


def _pareto(points: list[tuple[float, float, float]]) -> list[bool]:
    """Non-dominated flags for (latency min, size min, quality max)."""
    flags = []
    for i, p in enumerate(points):
        dominated = any(q[0] <= p[0] and q[1] <= p[1] and q[2] >= p[2] and q != p for j, q in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags


def _latency_report(value) -> dict:
    if isinstance(value, dict):
        return value
    v = float(value)
    return {"median": v, "p90": v, "min": v, "stdev": 0.0, "n": 1}


def _select_target(targets: list, target: str | None):
    from .run import target_label

    labels = [target_label(t) for t in targets]
    if target is None or target == "all":
        return list(targets)
    chosen = [t for t, label in zip(targets, labels) if target in (label, t.runtime)]
    if not chosen:
        raise InputError(f"--target {target!r} is not among the recipe's targets; expected one of "
                         f"{', '.join(labels)} (or all)")
    return chosen


# -- the search -------------------------------------------------------------------------------

def search(recipe, out: str | os.PathLike, *, target: str | None = None,
           constraints: SearchConstraints | None = None, budget_minutes: float | None = 30.0,
           trials: int | None = None, seed: int | None = None, log: Callable[[str], None] = print,
           progress=None, measure_latency: Callable | None = None) -> SearchResult:
    """Search ``recipe``'s space for the best variant that meets ``constraints``; see the module
    docstring for the optimizer, the reuse and the files written into ``out``.

    Args:
        recipe: a recipe file or ``Recipe`` (its ``search`` section is the space; its
            ``variants`` that are points of the space are the warm start).
        target: one of the recipe's target labels (``onnxruntime``, ``torch``, ``tvm-cpu``) or
            runtimes to search on; ``None`` or ``all``: every target of the recipe is a choice.
        budget_minutes: stop asking new trials after this much wall-clock time of this call (the
            trial in flight finishes); ``None``: no time limit.
        trials: stop when the study holds this many finished trials (earlier runs included).
        seed: the sampler's seed (default: the recipe's ``seed``).
        log: receives one line per trial; ``progress``: the steps' progress (``None``, ``True``
            or a callable, as everywhere).
        measure_latency: ``f(runner, artifact, target) -> ms or latency_ms dict`` in place of
            timing the runner (tests use a deterministic one: timing noise would otherwise make
            two runs differ); its values are cached like measurements.
    """
    import optuna
    import torch

    from .measure import BenchConfig, reference_outputs
    from .models import load_model
    from .recipe import Recipe, load_recipe
    from .run import _base_model, _slug, _Study, is_onnx_model, recipe_fingerprint, target_label
    from .tasks import load_task

    constraints = constraints or SearchConstraints()
    if not isinstance(constraints, SearchConstraints):
        raise InputError(f"constraints must be a SearchConstraints, got {type(constraints).__name__}")
    if budget_minutes is not None:
        _number("budget_minutes", budget_minutes, 0.0)
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or trials < 1):
        raise InputError(f"trials must be an integer >= 1, got {trials!r}")
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    seed = recipe.seed if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be an integer >= 0, got {seed!r}")
    space = SearchSpace.from_dict(recipe.search)
    if is_onnx_model(recipe.model):
        raise InputError(f"{recipe.source}: search needs a torch model (pruning, low-rank and distillation "
                         f"work on modules); {recipe.model!r} is an ONNX model")
    targets = _select_target(recipe.targets, target)
    labels = [target_label(t) for t in targets]
    bench = BenchConfig(**recipe.bench)
    torch.set_num_threads(bench.resolved_threads)

    loaded = load_model(recipe.model, seed=recipe.seed, weights=recipe.weights, input_shape=recipe.input_shape)
    shape = tuple(loaded.input_shape or ())
    if not shape:
        raise InputError(f"{recipe.source}: model {recipe.model!r} does not say its input shape; add input_shape")
    task = load_task(recipe.task, seed=recipe.seed, input_shape=shape)
    if task.test.x.shape[1:] != shape[1:]:
        raise InputError(f"{recipe.source}: task {recipe.task!r} gives inputs of shape {task.test.x.shape[1:]}, "
                         f"the model takes {shape[1:]}")
    labelled_top1 = task.labelled and task.metric == "top1"
    if "qat" in space.quantize and not labelled_top1:
        log(f"search: qat needs a labelled classification task; {task.name} is not, so it is not tried")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plain = dataclasses.replace(recipe, variants={}, targets=list(recipe.targets), search={})
    work_fp = _digest([recipe_fingerprint(plain), {k: v for k, v in space.to_dict().items() if k not in ("warm_start", "choose_tolerance")}])
    warm, not_expressed = (warm_start_points(recipe.variants, space, labels, labelled_top1) if space.warm_start
                           else ([], []))
    study_fp = _digest([work_fp, constraints.to_dict(), seed, labels] + ([warm] if warm else []))
    work = out / "work" / work_fp
    base = _base_model(loaded.module, task, recipe, work, log)
    reference = reference_outputs(base, task.test.x)
    base_quality, base_accuracy = _quality(task, reference, reference)
    from edgeopt.runtimes import machine_fingerprint

    machine = machine_fingerprint(bench.resolved_threads)
    latency_path = out / LATENCY_CACHE
    latencies = json.loads(latency_path.read_text()) if latency_path.is_file() else {}

    def timed(runner, art, tgt) -> dict:
        key = _digest([art.manifest.get("sha256"), target_label(tgt), machine, bench.warmup, bench.repeat,
                       "hook" if measure_latency is not None else "timed"])
        if key not in latencies:
            if measure_latency is not None:
                latencies[key] = _latency_report(measure_latency(runner, art, tgt))
            else:
                latencies[key] = runner.benchmark(task.test.x[:1], warmup=bench.warmup,
                                                  repeat=bench.repeat).latency.to_report()
            write_json_atomic(latency_path, latencies)
        return latencies[key]

    study_runner = _Study(recipe, task, base, task.test.x[:1], reference, bench, work, log, 1,
                          evaluation=None, cache=work / "cache", latency=timed)
    if progress is not None:
        study_runner.data = dataclasses.replace(study_runner.data, progress=progress)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import warnings

    # constraints_func is marked experimental in Optuna 4.6; the version is pinned
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    from .measure import one_line

    def constraints_func(frozen) -> list[float]:
        return list(frozen.user_attrs.get("constraints") or [0.0])

    def make_sampler(n_finished: int):
        s = seed * 1_000_003 + n_finished
        if space.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=s, constraints_func=constraints_func)
        return optuna.samplers.TPESampler(seed=s, constraints_func=constraints_func,
                                          n_startup_trials=space.startup_trials, multivariate=False)

    storage = JournalStorage(JournalFileBackend(str(out / JOURNAL)))
    name = f"search-{study_fp}"
    others = [s.study_name for s in optuna.get_all_study_summaries(storage) if s.study_name != name]
    if others:
        log(f"search: {out / JOURNAL} also holds {len(others)} search(es) with another recipe, constraints "
            "or seed; they are left as they are")
    directions = ["minimize", "minimize", "maximize"]
    study = optuna.create_study(study_name=name, storage=storage, directions=directions, load_if_exists=True,
                                sampler=make_sampler(0))
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # left running by a kill: its parameters are asked again (the reseeded sampler repeats them)
        study.tell(t.number, state=TrialState.FAIL)
        log(f"trial {t.number}: interrupted in an earlier run; asked again")
    # a failed trial is told PRUNED with FAILED_VIOLATION (its "error" says it failed): Optuna's
    # samplers ignore FAIL trials, but rank a pruned one by its constraint violation
    finished_states = (TrialState.COMPLETE, TrialState.PRUNED)
    failed = [FAILED_VIOLATION] * max(1, len(constraints.violations(None, None, None)))

    candidates = [(p, variant_name(p, trial_steps(p, space, labelled_top1)))
                  for p in space_points(space, labels, labelled_top1)]
    total = len(candidates)
    held = [t for t in study.get_trials(deepcopy=False, states=finished_states)]
    if held:
        log(f"search: resuming: {len(held)} finished trial(s) kept from an earlier run")
    log(f"search: {total} distinct candidates on {', '.join(labels)}; fp32 quality {base_quality:.4f}; "
        f"constraints {({k: v for k, v in constraints.to_dict().items() if v is not None}) or 'none'}")
    if space.warm_start:
        log(f"search: warm start: {len(warm)} of the recipe's variants first"
            + (" (" + ", ".join(o[len("recipe:"):] + " on " + p["runtime"] for o, p in warm) + ")" if warm else "")
            + (f"; not points of the space, skipped: {', '.join(not_expressed)}" if not_expressed else ""))
    ruled = RuledOut.from_trials(study.get_trials(deepcopy=False))
    if ruled.structures or ruled.points:
        log(f"search: {len(ruled.structures)} structure(s) and {len(ruled.points)} candidate(s) ruled out by "
            "failures of an earlier run")

    t0 = time.monotonic()
    ran: list[int] = []
    stopped = ""
    repeats = 0
    while True:
        everything = study.get_trials(deepcopy=False)
        done = [t for t in everything if t.state in finished_states]
        ruled = RuledOut.from_trials(everything)
        answered = {(t.user_attrs.get("variant"), t.user_attrs.get("runtime")) for t in done}
        still_open = [(p, v) for p, v in candidates
                      if (v, p["runtime"]) not in answered and ruled.covering(p, v) is None]
        if trials is not None and len(done) >= trials:
            stopped = f"{trials} trials"
            break
        if not still_open:
            out_count = sum(ruled.covering(p, v) is not None and (v, p["runtime"]) not in answered
                            for p, v in candidates)
            stopped = f"all {total} candidates tried" + (f" or ruled out by failures ({out_count} never built)"
                                                         if out_count else "")
            break
        if repeats >= max(10, total):
            stopped = (f"{repeats} asks in a row gave only candidates already tried (the sampler has converged; "
                       f"{len(still_open)} untried)")
            break
        if budget_minutes is not None and time.monotonic() - t0 >= budget_minutes * 60:
            stopped = f"budget of {budget_minutes:g} min"
            break
        # warm start: the next recipe variant not yet answered (finished, or failed with an error;
        # one a kill interrupted is asked again) nor ruled out, enqueued just before the ask that pops it
        warm_answered = {(t.user_attrs.get("origin"), t.params.get("runtime")) for t in everything
                         if t.state in finished_states or (t.state == TrialState.FAIL and "error" in t.user_attrs)}
        pending = next(((o, p) for o, p in warm if (o, p["runtime"]) not in warm_answered
                        and ruled.covering(p, variant_name(p, trial_steps(p, space, labelled_top1))) is None), None)
        if pending is not None and not any(t.state == TrialState.WAITING for t in everything):
            study.enqueue_trial(pending[1], user_attrs={"origin": pending[0]})
        study.sampler = steered_sampler(make_sampler(len(done)), lambda prefix: ruled.blocked(prefix, candidates),
                                        seed * 1_000_003 + len(done))
        trial = study.ask()
        params = suggest(trial, space, labels, labelled_top1)
        steps = trial_steps(params, space, labelled_top1)
        vname = variant_name(params, steps)
        tgt = targets[labels.index(params["runtime"])]
        earlier = next((t for t in done if t.user_attrs.get("variant") == vname
                        and t.user_attrs.get("runtime") == params["runtime"]), None)
        cover = ruled.covering(params, vname)
        if earlier is not None and "repeat_of" in earlier.user_attrs:
            cover = earlier.user_attrs["repeat_of"]  # answered from the trial that was built
        if cover is not None and (earlier is None or cover != earlier.number):
            earlier = next(t for t in everything if t.number == cover)
        origin = trial.user_attrs.get("origin") or "sampler"
        info = {"variant": vname, "runtime": params["runtime"], "steps": [s.to_dict() for s in steps],
                "origin": origin}
        for k, v in info.items():
            trial.set_user_attr(k, v)
        if earlier is not None:  # the same candidate again, or one a failure ruled out: answered
            repeats += 1         # from the earlier trial, never built again; it counts as a trial
            for k, v in earlier.user_attrs.items():
                if k not in info and k != "removed":
                    trial.set_user_attr(k, v)
            trial.set_user_attr("repeat_of", earlier.number)
            if "error" in earlier.user_attrs:
                trial.set_user_attr("constraints", failed)
                study.tell(trial, state=TrialState.PRUNED)
                log(f"trial {trial.number}: {vname} on {params['runtime']}: ruled out by failed trial "
                    f"{earlier.number}; not built")
            else:
                state = earlier.state
                study.tell(trial, earlier.values if state == TrialState.COMPLETE else None, state=state)
                log(f"trial {trial.number}: {vname} on {params['runtime']}: repeats trial {earlier.number}")
            continue
        repeats = 0
        ran.append(trial.number)
        start = time.monotonic()
        torch_steps = [s for s in steps if s.kind.level == "torch"]
        stage = "torch"
        try:
            model = study_runner.torch_model(steps) if torch_steps else None
            if torch_steps and constraints.max_accuracy_drop is not None:
                q, _ = _quality(task, reference_outputs(model, task.test.x), reference)
                drop = base_quality - q
                if drop > constraints.max_accuracy_drop + space.prune_margin:
                    trial.set_user_attr("quality", q)
                    trial.set_user_attr("accuracy_drop", drop)
                    trial.set_user_attr("constraints", constraints.violations(None, None, drop))
                    why = (f"torch-level drop {drop * 100:.2f} points > {constraints.max_accuracy_drop * 100:g}"
                           f" + margin {space.prune_margin * 100:g}")
                    trial.set_user_attr("why", why)
                    study.tell(trial, state=TrialState.PRUNED)
                    log(f"trial {trial.number}: {vname} on {params['runtime']}: pruned ({why}) [{origin}]")
                    continue
            stage = "build"
            entry = study_runner.measure(vname, steps, tgt)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            trial.set_user_attr("error", one_line(e))
            trial.set_user_attr("failed_stage", stage)
            trial.set_user_attr("constraints", failed)
            log(f"trial {trial.number}: {vname} on {params['runtime']}: FAILED: {one_line(e)} [{origin}]")
            if stage == "torch":
                removed = [structure(params)]
                if params.get("lowrank") and isinstance(_raised(study_runner.torch_model, torch_steps[:1]),
                                                        InputError):
                    # the low-rank step itself cannot meet its budget: nor can a stricter one
                    removed = [(0.0, j) for j in stricter_lowrank(space, params["lowrank"])]
                trial.set_user_attr("removed", [{"prune": p, "lowrank": j} for p, j in removed])
                names = [variant_name({"prune": p, "lowrank": j}, trial_steps({"prune": p, "lowrank": j}, space,
                                                                              labelled_top1)) for p, j in removed]
                log(f"search: {', '.join(names)} cannot be built on this model; removed from the space for the "
                    "rest of the search (every quantization and runtime of it)")
            study.tell(trial, state=TrialState.PRUNED)
            _write(out, study, constraints, space, seed, base_quality, base_accuracy, labels, "running")
            continue
        latency = entry["latency_ms"]["median"]
        size_mb = entry["size_bytes"] / 1e6
        q = entry["accuracy"] if labelled_top1 else entry["agreement"]
        drop = base_quality - q
        violations = constraints.violations(latency, size_mb, drop)
        feasible = all(v <= 0 for v in violations)
        attrs = {"latency_ms": latency, "size_mb": size_mb, "quality": q, "accuracy": entry.get("accuracy"),
                 "agreement": entry.get("agreement"), "accuracy_drop": drop, "constraints": violations,
                 "feasible": feasible, "latency": entry["latency_ms"], "artifact": entry["artifact"], "seconds": round(time.monotonic() - start, 1),
                 "entry": entry}
        if not feasible:
            attrs["why"] = _why(constraints, latency, size_mb, drop)
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        study.tell(trial, [latency, size_mb, q])
        log(f"trial {trial.number}: {vname} on {params['runtime']}: {latency:.3f} ms, {size_mb:.3f} MB, "
            f"quality {q:.4f} (drop {drop * 100:+.2f} points): "
            + ("feasible" if feasible else f"infeasible ({attrs['why']})")
            + f" [{attrs['seconds']:.0f} s] [{origin}]")
        _write(out, study, constraints, space, seed, base_quality, base_accuracy, labels, "running")

    result = _finish(out, study, recipe, targets, labels, constraints, space, seed, base_quality, base_accuracy,
                     machine, task, stopped, log)
    result.ran = ran
    result.steps_run = [name for name, _ in study_runner.applied]
    return result


def _raised(fn: Callable, *args) -> Exception | None:
    """The exception ``fn(*args)`` raises, or None."""
    try:
        fn(*args)
    except Exception as e:
        return e
    return None


def _why(c: SearchConstraints, latency, size_mb, drop) -> str:
    out = []
    if c.max_latency_ms is not None and latency > c.max_latency_ms:
        out.append(f"latency {latency:.3f} > {c.max_latency_ms:g} ms")
    if c.max_size_mb is not None and size_mb > c.max_size_mb:
        out.append(f"size {size_mb:.3f} > {c.max_size_mb:g} MB")
    if c.max_accuracy_drop is not None and drop > c.max_accuracy_drop:
        out.append(f"drop {drop * 100:.2f} > {c.max_accuracy_drop * 100:g} points")
    return ", ".join(out)


# -- output -----------------------------------------------------------------------------------

_ROW_KEYS = ("variant", "runtime", "origin", "steps", "latency_ms", "size_mb", "quality", "accuracy", "agreement",
             "accuracy_drop", "constraints", "feasible", "why", "error", "failed_stage", "removed", "repeat_of",
             "seconds", "latency", "artifact")


def _rows(study) -> list[dict]:
    """search.json's trials; ``state``: complete, pruned, failed (an ``error``: Optuna holds it as
    pruned and infeasible), fail (interrupted by a kill, asked again) or running."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        state = "failed" if "error" in t.user_attrs else t.state.name.lower()
        row = {"number": t.number, "state": state, "params": dict(t.params)}
        row.update({k: t.user_attrs[k] for k in _ROW_KEYS if k in t.user_attrs})
        rows.append(row)
    return rows


def _choose(rows: list[dict], tolerance: float = 0.0) -> tuple[list[dict], dict | None, list[dict]]:
    """(Pareto set of the feasible trials, the chosen trial, the closest infeasible ones). The
    chosen trial: among the feasible trials within ``tolerance`` (relative) of the lowest
    latency, the one of highest quality (then lower latency, then smaller size)."""
    measured = [r for r in rows if r["state"] == "complete" and "repeat_of" not in r]
    feasible = [r for r in measured if r.get("feasible")]
    flags = _pareto([(r["latency_ms"], r["size_mb"], r["quality"]) for r in feasible])
    pareto = sorted((r for r, f in zip(feasible, flags) if f), key=lambda r: r["latency_ms"])
    fastest = min((r["latency_ms"] for r in feasible), default=None)
    near = [r for r in feasible if r["latency_ms"] <= fastest * (1.0 + tolerance)] if feasible else []
    chosen = min(near, key=lambda r: (-r["quality"], r["latency_ms"], r["size_mb"]), default=None)
    candidates = [r for r in rows if r["state"] in ("complete", "pruned") and "repeat_of" not in r]
    closest = sorted(candidates, key=lambda r: (sum(max(v, 0.0) for v in r.get("constraints") or []),
                                                r.get("latency_ms") or math.inf))[:3]
    return pareto, chosen, ([] if chosen else closest)


def counts(rows: list[dict]) -> dict:
    """How many trials there are of each kind: ``trials`` (every finished one: the trial budget
    counts them), ``measured`` (built and timed), ``pruned``, ``failed`` (failures and the asks a
    failure answered), ``failed_built`` (failures that were built: one per failed configuration),
    ``repeats`` (answered from an earlier trial, not built) and ``interrupted``."""
    finished = [r for r in rows if r["state"] in ("complete", "pruned", "failed")]
    return {"trials": len(finished),
            "measured": sum(r["state"] == "complete" and "repeat_of" not in r for r in rows),
            "pruned": sum(r["state"] == "pruned" for r in rows),
            "failed": sum(r["state"] == "failed" for r in rows),
            "failed_built": sum(r["state"] == "failed" and "repeat_of" not in r for r in rows),
            "repeats": sum("repeat_of" in r for r in rows),
            "interrupted": sum(r["state"] == "fail" for r in rows)}


def _write(out: Path, study, constraints, space, seed, base_quality, base_accuracy, labels,
           stopped: str, extra: dict | None = None) -> dict:
    rows = _rows(study)
    pareto, chosen, closest = _choose(rows, space.choose_tolerance)
    doc = {"schema": 1, "study": study.study_name, "seed": seed, "targets": labels,
           "constraints": constraints.to_dict(), "space": space.to_dict(),
           "objectives": {"latency_ms": "minimize", "size_mb": "minimize", "quality": "maximize"},
           "fp32": {"quality": base_quality, "accuracy": base_accuracy},
           "stopped": stopped, "counts": counts(rows), "trials": rows, "pareto": [r["number"] for r in pareto],
           "chosen": chosen["number"] if chosen else None, "closest": [r["number"] for r in closest],
           **(extra or {})}
    write_json_atomic(out / SEARCH_JSON, doc)
    return doc


def chosen_recipe(recipe, row: dict, target, source: str = "") -> str:
    """An ordinary recipe (YAML text) holding exactly the chosen variant on its target."""
    import yaml

    doc: dict = {"model": recipe.model}
    if recipe.weights:
        doc["weights"] = recipe.weights
    doc["task"] = recipe.task
    if recipe.input_shape:
        doc["input_shape"] = list(recipe.input_shape)
    doc["seed"] = recipe.seed
    if recipe.train:
        doc["train"] = dict(recipe.train)
    doc["variants"] = {row["variant"]: row["steps"]}
    t: dict = {"runtime": target.runtime}
    if target.target is not None:
        t["target"] = target.target
    if target.build is not None:
        t.update(flat_params(target.build))  # the compile options that differ from the defaults
    doc["targets"] = [t]
    if recipe.bench:
        doc["bench"] = dict(recipe.bench)
    head = (f"# Written by edgeopt search{f' from {source}' if source else ''}: trial {row['number']}, "
            f"{row['latency_ms']:.3f} ms, {row['size_mb']:.3f} MB, quality {row['quality']:.4f}.\n"
            "# `edgeopt run` on this file rebuilds and measures exactly this variant.\n")
    return head + yaml.safe_dump(json.loads(json.dumps(doc)), sort_keys=False)


def progress_figure(rows: list[dict]):
    """Objective values over the trials that ran (built and measured, pruned or failed; a trial
    answered from an earlier one is not drawn, so the x axis ends at the last trial that ran):
    latency, size and quality per trial (filled: feasible, hollow: infeasible, x: pruned), with
    the best feasible latency so far as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "repeat_of" not in r and r["state"] in ("complete", "pruned", "failed")]
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    keys = (("latency_ms", "latency (ms)"), ("size_mb", "size (MB)"), ("quality", "quality"))
    for ax, (key, label) in zip(axes, keys):
        for r in rows:
            if r["state"] == "failed":
                ax.axvline(r["number"], color="tab:red", alpha=0.4, lw=0.8)
            v = r.get(key)
            if v is None:
                continue
            if r["state"] == "pruned":
                ax.plot(r["number"], v, "x", color="tab:red")
            elif r.get("feasible"):
                ax.plot(r["number"], v, "o", color="tab:blue")
            else:
                ax.plot(r["number"], v, "o", mfc="none", color="tab:gray")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    best, xs, ys = math.inf, [], []
    for r in rows:
        if r["state"] == "complete" and r.get("feasible"):
            best = min(best, r["latency_ms"])
        if best < math.inf:
            xs.append(r["number"])
            ys.append(best)
    if xs:
        axes[0].step(xs, ys, where="post", color="tab:green", label="best feasible so far")
        axes[0].legend(loc="upper right", fontsize=8)
    if rows:
        axes[-1].set_xlim(rows[0]["number"] - 0.5, rows[-1]["number"] + 0.5)
    axes[-1].set_xlabel("trial")
    fig.suptitle("search progress (filled: feasible, hollow: infeasible, x: pruned, red line: failed)", fontsize=10)
    fig.tight_layout()
    return fig


def _progress_png(rows: list[dict]) -> bytes:
    import io

    import matplotlib.pyplot as plt

    fig = progress_figure(rows)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=90)
    finally:
        plt.close(fig)
    return buf.getvalue()


def _counts_text(c: dict) -> str:
    return (f"{c['trials']} ({c['measured']} measured, {c['pruned']} pruned, {c['failed']} failed of which "
            f"{c['failed_built']} built, {c['repeats']} answered from earlier trials)")


def _fmt_row(r: dict) -> str:
    origin = f" [{r['origin']}]" if r.get("origin") else ""
    if r["state"] == "pruned":
        return f"trial {r['number']}: {r.get('variant')} on {r.get('runtime')}: pruned ({r.get('why')}){origin}"
    return (f"trial {r['number']}: {r.get('variant')} on {r.get('runtime')}: {r['latency_ms']:.3f} ms, "
            f"{r['size_mb']:.3f} MB, quality {r['quality']:.4f}"
            + (f" ({r['why']})" if r.get("why") else "") + origin)


def _finish(out: Path, study, recipe, targets, labels, constraints, space, seed, base_quality, base_accuracy,
            machine, task, stopped: str, log) -> SearchResult:
    import base64

    from edgeopt.core.files import write_bytes_atomic

    from .report_html import write_report
    from .report_schema import make_report
    from .report_text import markdown

    rows = _rows(study)
    pareto, chosen, closest = _choose(rows, space.choose_tolerance)
    paths = {"search": out / SEARCH_JSON, "journal": out / JOURNAL}
    if chosen is not None:
        src = Path(chosen["artifact"])
        dst = out / "chosen"
        tmp = out / ".chosen.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
        target = targets[labels.index(chosen["runtime"])]
        write_text_atomic(out / "chosen-recipe.yaml", chosen_recipe(recipe, chosen, target, str(recipe.source)))
        paths.update(chosen=dst, recipe=out / "chosen-recipe.yaml")
    else:  # an earlier search's choice must not look like this one's
        shutil.rmtree(out / "chosen", ignore_errors=True)
        (out / "chosen-recipe.yaml").unlink(missing_ok=True)
    _write(out, study, constraints, space, seed, base_quality, base_accuracy, labels, stopped)

    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    entries = [by_number[r["number"]].user_attrs["entry"] for r in rows
               if r["state"] == "complete" and "repeat_of" not in r and "entry" in by_number[r["number"]].user_attrs]
    if entries:
        task_info = {"name": task.name, "metric": task.metric, "higher_is_better": task.higher_is_better,
                     "labelled": task.labelled}
        meta = {"model": recipe.model, "recipe": str(recipe.source), "task": recipe.task, "search": study.study_name,
                "chosen": chosen["variant"] + "/" + chosen["runtime"] if chosen else None}
        report = make_report(entries, machine, task_info, None, meta=meta)
        write_report(report, out, plot=True)
        png = _progress_png(rows)
        write_bytes_atomic(out / "progress.png", png)
        lines = [f"- {_fmt_row(r)}" for r in pareto]
        section_md = ["", "## Search", "",
                      f"Stopped: {stopped}. Trials: {_counts_text(counts(rows))}. "
                      f"Chosen: {_fmt_row(chosen) if chosen else 'none meets the constraints'}.", "",
                      "Pareto set (feasible trials):", "", *(lines or ["- none"]), "",
                      "![objective values over trials](progress.png)", ""]
        write_text_atomic(out / "report.md", markdown(report) + "\n".join(section_md))
        import html as _html

        img = base64.b64encode(png).decode("ascii")
        items = "".join(f"<li>{_html.escape(_fmt_row(r))}</li>" for r in pareto) or "<li>none</li>"
        section = (f'<h2 id="search">Search</h2><p>Stopped: {_html.escape(stopped)}. Chosen: '
                   f'{_html.escape(_fmt_row(chosen) if chosen else "none meets the constraints")}.</p>'
                   f'<p>Pareto set (feasible trials):</p><ul>{items}</ul>'
                   f'<p><img src="data:image/png;base64,{img}" alt="objective values over trials" '
                   'style="max-width:100%"></p>')
        page = (out / "index.html").read_text()
        write_text_atomic(out / "index.html", page.replace("</body>", section + "\n</body>", 1))
        paths.update(report=out / "report.json", progress=out / "progress.png", html=out / "index.html")
    log(f"search: stopped after {stopped}; {_counts_text(counts(rows))}; {len(pareto)} on the Pareto set")
    if chosen:
        log(f"search: chosen {_fmt_row(chosen)}")
    else:
        log("search: no trial meets the constraints; closest:")
        for r in closest:
            log(f"  {_fmt_row(r)}")
    return SearchResult(trials=rows, pareto=pareto, chosen=chosen, closest=closest, paths=paths, stopped=stopped)
