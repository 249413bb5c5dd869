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
a recipe target, built and measured by the same ``edgeopt.pipeline.study.Study`` as ``edgeopt run``:
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

The space and the constraints live in ``edgeopt.pipeline.search_space``.

Example:
    >>> from edgeopt.pipeline.search import choose
    >>> rows = [{"number": 0, "state": "complete", "feasible": True, "latency_ms": 1.0, "size_mb": 2.0,
    ...          "quality": 0.90, "constraints": []},
    ...         {"number": 1, "state": "complete", "feasible": True, "latency_ms": 1.01, "size_mb": 2.0,
    ...          "quality": 0.95, "constraints": []}]
    >>> pareto, chosen, closest = choose(rows, tolerance=0.03)
    >>> chosen["number"], [r["number"] for r in pareto]   # 1% slower is within noise: more accurate wins
    (1, [0, 1])
    >>> from edgeopt.pipeline.search import search  # doctest: +SKIP
    >>> from edgeopt.pipeline.search_space import SearchConstraints  # doctest: +SKIP
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

from edgeopt.core.config import flat_params
from edgeopt.core.errors import InputError
from edgeopt.core.files import write_json_atomic, write_text_atomic
from edgeopt.core.result import reporter

from .recipe import Recipe, load_recipe
from .report_html import write_report
from .report_schema import make_report
from .report_text import Section
from .search_space import (SearchConstraints, SearchSpace, check_number, space_points, stricter_lowrank, structure,
                           suggest, trial_steps, variant_name, warm_start_points)
from .study import Study, load_inputs, recipe_fingerprint, task_info

JOURNAL, SEARCH_JSON, LATENCY_CACHE = "search.journal", "search.json", "latency-cache.json"


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


# -- failures: what they rule out, and a sampler that never proposes it again ----------------

#: The constraint violation a failed trial is told with (Optuna's TPE and NSGA-II rank infeasible
#: trials by their summed violation): worse than any measured one, so a failure is the worst
#: evidence the sampler holds about its region.
FAILED_VIOLATION = 1e9


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
    labels = [t.label for t in targets]
    if target is None or target == "all":
        return list(targets)
    chosen = [t for t, label in zip(targets, labels) if target in (label, t.runtime)]
    if not chosen:
        raise InputError(f"--target {target!r} is not among the recipe's targets; expected one of "
                         f"{', '.join(labels)} (or all)")
    return chosen


def _cached_latency(path: Path, machine: dict, bench, example, hook: Callable | None) -> Callable:
    """``latency(runner, artifact, target)`` for ``Study``: each artifact checksum, target,
    machine and timing settings measured once (``hook`` in place of timing when given), the
    measurements kept in ``path`` for later calls."""
    latencies = json.loads(path.read_text()) if path.is_file() else {}

    def latency(runner, art, target) -> dict:
        key = _digest([art.manifest.get("sha256"), target.label, machine, bench.warmup, bench.repeat,
                       "hook" if hook is not None else "timed"])
        if key not in latencies:
            if hook is not None:
                latencies[key] = _latency_report(hook(runner, art, target))
            else:
                latencies[key] = runner.benchmark(example, warmup=bench.warmup,
                                                  repeat=bench.repeat).latency.to_report()
            write_json_atomic(path, latencies)
        return latencies[key]

    return latency


def _open_study(out: Path, name: str, sampler, say):
    """The Optuna study ``name`` in ``out``'s journal (created, or loaded to resume); trials a
    kill left running are told ``FAIL``, so that their parameters are asked again."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    storage = JournalStorage(JournalFileBackend(str(out / JOURNAL)))
    others = [s.study_name for s in optuna.get_all_study_summaries(storage) if s.study_name != name]
    if others:
        say(f"search: {out / JOURNAL} also holds {len(others)} search(es) with another recipe, constraints "
            "or seed; they are left as they are")
    study = optuna.create_study(study_name=name, storage=storage, directions=["minimize", "minimize", "maximize"],
                                load_if_exists=True, sampler=sampler)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # left running by a kill: its parameters are asked again (the reseeded sampler repeats them)
        study.tell(t.number, state=TrialState.FAIL)
        say(f"trial {t.number}: interrupted in an earlier run; asked again")
    return study


def _quiet_optuna() -> None:
    """Optuna's own logging down to warnings, and no warning for ``constraints_func``: it is
    marked experimental in Optuna 4.6, and the version is pinned."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _constraint_values(frozen) -> list[float]:
    """Optuna's ``constraints_func``: the violations a trial recorded (<= 0: met)."""
    return list(frozen.user_attrs.get("constraints") or [0.0])


# -- the search -------------------------------------------------------------------------------

def search(recipe, out: str | os.PathLike, *, target: str | None = None,
           constraints: SearchConstraints | None = None, budget_minutes: float | None = 30.0,
           trials: int | None = None, seed: int | None = None, progress=print,
           measure_latency: Callable | None = None) -> SearchResult:
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
        progress: one line per trial (``None``, ``True`` or a callable, as everywhere; default
            ``print``); the steps run silent.
        measure_latency: ``f(runner, artifact, target) -> ms or latency_ms dict`` in place of
            timing the runner (tests use a deterministic one: timing noise would otherwise make
            two runs differ); its values are cached like measurements.
    """
    constraints = constraints or SearchConstraints()
    if not isinstance(constraints, SearchConstraints):
        raise InputError(f"constraints must be a SearchConstraints, got {type(constraints).__name__}")
    if budget_minutes is not None:
        check_number("budget_minutes", budget_minutes, 0.0)
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or trials < 1):
        raise InputError(f"trials must be an integer >= 1, got {trials!r}")
    run = _Search.set_up(recipe, Path(out), target, constraints, seed, reporter(progress), measure_latency)
    t0 = time.monotonic()
    while True:
        now = run.snapshot()
        stopped = run.stop_reason(now, trials, budget_minutes, t0)
        if stopped:
            break
        run.trial(now)
    return run.finish(stopped)


@dataclass
class _Now:
    """The study's trials at one ask: all of them, the finished ones, what failures rule out."""

    everything: list
    done: list
    ruled: RuledOut


@dataclass
class _Search:
    """One ``search`` call: the Optuna study, the ``Study`` that builds and measures trials, and
    what every part of the call shares (set up by ``set_up``)."""

    out: Path
    recipe: Recipe
    task: Any
    space: SearchSpace
    constraints: SearchConstraints
    seed: int
    targets: list
    labels: list
    labelled_top1: bool
    base_quality: float
    base_accuracy: float | None
    machine: dict
    runner: Study
    study: Any
    warm: list
    say: Callable[[str], None]
    candidates: list = field(default_factory=list)
    ran: list = field(default_factory=list)
    repeats: int = 0

    @classmethod
    def set_up(cls, recipe, out: Path, target, constraints, seed, say, measure_latency) -> "_Search":
        """Load and check the recipe, model and task (nothing is written before), the base model,
        the journal and the warm-start points; log where the search starts from."""
        from edgeopt.runtimes import machine_fingerprint

        if not isinstance(recipe, Recipe):
            recipe = load_recipe(recipe)
        seed = recipe.seed if seed is None else seed
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InputError(f"seed must be an integer >= 0, got {seed!r}")
        space = SearchSpace.from_dict(recipe.search)
        targets = _select_target(recipe.targets, target)
        labels = [t.label for t in targets]
        inputs = load_inputs(recipe, torch_model_for="search")
        task = inputs.task
        labelled_top1 = task.labelled and task.metric == "top1"
        if "qat" in space.quantize and not labelled_top1:
            say(f"search: qat needs a labelled classification task; {task.name} is not, so it is not tried")
        out.mkdir(parents=True, exist_ok=True)
        plain = dataclasses.replace(recipe, variants={}, targets=list(recipe.targets), search={})
        work_fp = _digest([recipe_fingerprint(plain), {k: v for k, v in space.to_dict().items()
                                                       if k not in ("warm_start", "choose_tolerance")}])
        warm, not_expressed = (warm_start_points(recipe.variants, space, labels, labelled_top1) if space.warm_start
                               else ([], []))
        study_fp = _digest([work_fp, constraints.to_dict(), seed, labels] + ([warm] if warm else []))
        work = out / "work" / work_fp
        base = inputs.base(work, say)
        base_quality, base_accuracy = _quality(task, base.references[0], base.references[0])
        machine = machine_fingerprint(inputs.bench.resolved_threads)
        latency = _cached_latency(out / LATENCY_CACHE, machine, inputs.bench, task.test.x[:1], measure_latency)
        runner = Study(inputs, base, work, progress=say, cache=work / "cache", latency=latency)
        _quiet_optuna()
        run = cls(out, recipe, task, space, constraints, seed, targets, labels, labelled_top1, base_quality,
                  base_accuracy, machine, runner, None, warm, say)
        run.study = _open_study(out, f"search-{study_fp}", run.sampler(0), say)
        run.candidates = [(p, run.name(p)) for p in space_points(space, labels, labelled_top1)]
        run.log_start(not_expressed)
        return run

    def sampler(self, n_finished: int):
        """The base sampler, seeded from (seed, finished trials): a resumed search asks what an
        uninterrupted one asks."""
        import optuna

        s = self.seed * 1_000_003 + n_finished
        if self.space.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=s, constraints_func=_constraint_values)
        return optuna.samplers.TPESampler(seed=s, constraints_func=_constraint_values,
                                          n_startup_trials=self.space.startup_trials, multivariate=False)

    def name(self, params: dict) -> str:
        """The variant name of a point of the space."""
        return variant_name(params, trial_steps(params, self.space, self.labelled_top1))

    def log_start(self, not_expressed: list[str]) -> None:
        held = self.snapshot().done
        if held:
            self.say(f"search: resuming: {len(held)} finished trial(s) kept from an earlier run")
        constraints = {k: v for k, v in self.constraints.to_dict().items() if v is not None}
        self.say(f"search: {len(self.candidates)} distinct candidates on {', '.join(self.labels)}; fp32 quality "
                 f"{self.base_quality:.4f}; constraints {constraints or 'none'}")
        if self.space.warm_start:
            warm = self.warm
            self.say(f"search: warm start: {len(warm)} of the recipe's variants first"
                     + (" (" + ", ".join(o[len("recipe:"):] + " on " + p["runtime"] for o, p in warm) + ")"
                        if warm else "")
                     + (f"; not points of the space, skipped: {', '.join(not_expressed)}" if not_expressed else ""))
        ruled = self.snapshot().ruled
        if ruled.structures or ruled.points:
            self.say(f"search: {len(ruled.structures)} structure(s) and {len(ruled.points)} candidate(s) ruled "
                     "out by failures of an earlier run")

    def snapshot(self) -> _Now:
        everything = self.study.get_trials(deepcopy=False)
        return _Now(everything, [t for t in everything if _finished(t)], RuledOut.from_trials(everything))

    def stop_reason(self, now: _Now, trials: int | None, budget_minutes: float | None, t0: float) -> str:
        """Why the search stops before the next ask, or "" to go on."""
        answered = {(t.user_attrs.get("variant"), t.user_attrs.get("runtime")) for t in now.done}
        still_open = [(p, v) for p, v in self.candidates
                      if (v, p["runtime"]) not in answered and now.ruled.covering(p, v) is None]
        if trials is not None and len(now.done) >= trials:
            return f"{trials} trials"
        if not still_open:
            out_count = sum(now.ruled.covering(p, v) is not None and (v, p["runtime"]) not in answered
                            for p, v in self.candidates)
            return (f"all {len(self.candidates)} candidates tried"
                    + (f" or ruled out by failures ({out_count} never built)" if out_count else ""))
        if self.repeats >= max(10, len(self.candidates)):
            return (f"{self.repeats} asks in a row gave only candidates already tried (the sampler has converged; "
                    f"{len(still_open)} untried)")
        if budget_minutes is not None and time.monotonic() - t0 >= budget_minutes * 60:
            return f"budget of {budget_minutes:g} min"
        return ""

    def enqueue_warm(self, now: _Now) -> None:
        """Warm start: the next recipe variant not yet answered (finished, or failed with an
        error; one a kill interrupted is asked again) nor ruled out, enqueued just before the ask
        that pops it."""
        from optuna.trial import TrialState

        answered = {(t.user_attrs.get("origin"), t.params.get("runtime")) for t in now.everything
                    if _finished(t) or (t.state == TrialState.FAIL and "error" in t.user_attrs)}
        pending = next(((o, p) for o, p in self.warm if (o, p["runtime"]) not in answered
                        and now.ruled.covering(p, self.name(p)) is None), None)
        if pending is not None and not any(t.state == TrialState.WAITING for t in now.everything):
            self.study.enqueue_trial(pending[1], user_attrs={"origin": pending[0]})

    def trial(self, now: _Now) -> None:
        """Ask one trial and answer it: from an earlier trial, or built and measured."""
        self.enqueue_warm(now)
        self.study.sampler = steered_sampler(self.sampler(len(now.done)),
                                             lambda prefix: now.ruled.blocked(prefix, self.candidates),
                                             self.seed * 1_000_003 + len(now.done))
        trial = self.study.ask()
        params = suggest(trial, self.space, self.labels, self.labelled_top1)
        steps = trial_steps(params, self.space, self.labelled_top1)
        vname = variant_name(params, steps)
        info = {"variant": vname, "runtime": params["runtime"], "steps": [s.to_dict() for s in steps],
                "origin": trial.user_attrs.get("origin") or "sampler"}
        for k, v in info.items():
            trial.set_user_attr(k, v)
        earlier = self.earlier(now, params, vname)
        if earlier is not None:  # the same candidate again, or one a failure ruled out: answered
            self.repeats += 1    # from the earlier trial, never built again; it counts as a trial
            self.answer_from(trial, earlier, info)
            return
        self.repeats = 0
        self.ran.append(trial.number)
        self.build(trial, params, steps, info)

    def earlier(self, now: _Now, params: dict, vname: str):
        """The finished trial that answers this candidate (the one that was built, or the failure
        that rules it out), or None."""
        earlier = next((t for t in now.done if t.user_attrs.get("variant") == vname
                        and t.user_attrs.get("runtime") == params["runtime"]), None)
        cover = now.ruled.covering(params, vname)
        if earlier is not None and "repeat_of" in earlier.user_attrs:
            cover = earlier.user_attrs["repeat_of"]  # answered from the trial that was built
        if cover is not None and (earlier is None or cover != earlier.number):
            earlier = next(t for t in now.everything if t.number == cover)
        return earlier

    def answer_from(self, trial, earlier, info: dict) -> None:
        from optuna.trial import TrialState

        for k, v in earlier.user_attrs.items():
            if k not in info and k != "removed":
                trial.set_user_attr(k, v)
        trial.set_user_attr("repeat_of", earlier.number)
        where = f"trial {trial.number}: {info['variant']} on {info['runtime']}"
        if "error" in earlier.user_attrs:
            trial.set_user_attr("constraints", self.failed_violation())
            self.study.tell(trial, state=TrialState.PRUNED)
            self.say(f"{where}: ruled out by failed trial {earlier.number}; not built")
        else:
            state = earlier.state
            self.study.tell(trial, earlier.values if state == TrialState.COMPLETE else None, state=state)
            self.say(f"{where}: repeats trial {earlier.number}")

    def failed_violation(self) -> list[float]:
        """What a failed trial is told: ``FAILED_VIOLATION`` on every constraint."""
        return [FAILED_VIOLATION] * max(1, len(self.constraints.violations(None, None, None)))

    def build(self, trial, params: dict, steps: list, info: dict) -> None:
        """Build and measure a new candidate (pruned early when its torch-level drop is hopeless)."""
        start = time.monotonic()
        torch_steps = [s for s in steps if s.kind.level == "torch"]
        stage = "torch"
        try:
            model = self.runner.torch_model(steps) if torch_steps else None
            if torch_steps and self.pruned_early(trial, model, info):
                return
            stage = "build"
            entry = self.runner.measure(info["variant"], steps, self.targets[self.labels.index(params["runtime"])])
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            self.failed(trial, e, stage, params, torch_steps, info)
            return
        self.measured(trial, entry, info, time.monotonic() - start)

    def pruned_early(self, trial, model, info: dict) -> bool:
        """Tell ``trial`` PRUNED when the torch-level drop already exceeds the limit plus the margin."""
        from optuna.trial import TrialState

        from edgeopt.runtimes.torch_runner import torch_outputs

        limit = self.constraints.max_accuracy_drop
        if limit is None:
            return False
        q, _ = _quality(self.task, torch_outputs(model, self.task.test.x)[0], self.runner.reference)
        drop = self.base_quality - q
        if drop <= limit + self.space.prune_margin:
            return False
        why = f"torch-level drop {drop * 100:.2f} points > {limit * 100:g} + margin {self.space.prune_margin * 100:g}"
        for k, v in (("quality", q), ("accuracy_drop", drop),
                     ("constraints", self.constraints.violations(None, None, drop)), ("why", why)):
            trial.set_user_attr(k, v)
        self.study.tell(trial, state=TrialState.PRUNED)
        self.say(f"trial {trial.number}: {info['variant']} on {info['runtime']}: pruned ({why}) [{info['origin']}]")
        return True

    def failed(self, trial, error: Exception, stage: str, params: dict, torch_steps: list, info: dict) -> None:
        """Record a failure; one in a torch-level step rules out its whole structure."""
        from optuna.trial import TrialState

        from .measure import one_line

        trial.set_user_attr("error", one_line(error))
        trial.set_user_attr("failed_stage", stage)
        trial.set_user_attr("constraints", self.failed_violation())
        self.say(f"trial {trial.number}: {info['variant']} on {info['runtime']}: FAILED: {one_line(error)} "
                 f"[{info['origin']}]")
        if stage == "torch":
            removed = [structure(params)]
            if params.get("lowrank") and isinstance(_raised(self.runner.torch_model, torch_steps[:1]), InputError):
                # the low-rank step itself cannot meet its budget: nor can a stricter one
                removed = [(0.0, j) for j in stricter_lowrank(self.space, params["lowrank"])]
            trial.set_user_attr("removed", [{"prune": p, "lowrank": j} for p, j in removed])
            names = [self.name({"prune": p, "lowrank": j}) for p, j in removed]
            self.say(f"search: {', '.join(names)} cannot be built on this model; removed from the space for the "
                     "rest of the search (every quantization and runtime of it)")
        self.study.tell(trial, state=TrialState.PRUNED)
        self.write("running")

    def measured(self, trial, entry: dict, info: dict, seconds: float) -> None:
        """Tell ``trial`` its objectives and record what the report and search.json show."""
        latency = entry["latency_ms"]["median"]
        size_mb = entry["size_bytes"] / 1e6
        q = entry["accuracy"] if self.labelled_top1 else entry["agreement"]
        drop = self.base_quality - q
        violations = self.constraints.violations(latency, size_mb, drop)
        feasible = all(v <= 0 for v in violations)
        attrs = {"latency_ms": latency, "size_mb": size_mb, "quality": q, "accuracy": entry.get("accuracy"),
                 "agreement": entry.get("agreement"), "accuracy_drop": drop, "constraints": violations,
                 "feasible": feasible, "latency": entry["latency_ms"], "artifact": entry["artifact"],
                 "seconds": round(seconds, 1), "entry": entry}
        if not feasible:
            attrs["why"] = _why(self.constraints, latency, size_mb, drop)
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        self.study.tell(trial, [latency, size_mb, q])
        self.say(f"trial {trial.number}: {info['variant']} on {info['runtime']}: {latency:.3f} ms, {size_mb:.3f} MB, "
                 f"quality {q:.4f} (drop {drop * 100:+.2f} points): "
                 + ("feasible" if feasible else f"infeasible ({attrs['why']})")
                 + f" [{attrs['seconds']:.0f} s] [{info['origin']}]")
        self.write("running")

    def write(self, stopped: str) -> dict:
        """Write search.json (every trial, the Pareto set, the choice); return its content."""
        rows = _rows(self.study)
        pareto, chosen, closest = choose(rows, self.space.choose_tolerance)
        doc = {"schema": 1, "study": self.study.study_name, "seed": self.seed, "targets": self.labels,
               "constraints": self.constraints.to_dict(), "space": self.space.to_dict(),
               "objectives": {"latency_ms": "minimize", "size_mb": "minimize", "quality": "maximize"},
               "fp32": {"quality": self.base_quality, "accuracy": self.base_accuracy},
               "stopped": stopped, "counts": counts(rows), "trials": rows, "pareto": [r["number"] for r in pareto],
               "chosen": chosen["number"] if chosen else None, "closest": [r["number"] for r in closest]}
        write_json_atomic(self.out / SEARCH_JSON, doc)
        return doc

    def finish(self, stopped: str) -> SearchResult:
        """Write the choice (``chosen/``, ``chosen-recipe.yaml``), search.json and the report;
        log the outcome."""
        rows = _rows(self.study)
        pareto, chosen, closest = choose(rows, self.space.choose_tolerance)
        paths = {"search": self.out / SEARCH_JSON, "journal": self.out / JOURNAL}
        paths.update(self.keep_choice(chosen))
        self.write(stopped)
        paths.update(self.write_report(rows, pareto, chosen, stopped))
        self.say(f"search: stopped after {stopped}; {_counts_text(counts(rows))}; {len(pareto)} on the Pareto set")
        if chosen:
            self.say(f"search: chosen {_fmt_row(chosen)}")
        else:
            self.say("search: no trial meets the constraints; closest:")
            for r in closest:
                self.say(f"  {_fmt_row(r)}")
        return SearchResult(trials=rows, pareto=pareto, chosen=chosen, closest=closest, paths=paths, stopped=stopped,
                            ran=self.ran, steps_run=[name for name, _ in self.runner.applied])

    def keep_choice(self, chosen: dict | None) -> dict:
        """Copy the chosen artifact to ``chosen/`` and write ``chosen-recipe.yaml`` (an earlier
        search's choice is removed when nothing is chosen); return their paths."""
        out = self.out
        if chosen is None:  # an earlier search's choice must not look like this one's
            shutil.rmtree(out / "chosen", ignore_errors=True)
            (out / "chosen-recipe.yaml").unlink(missing_ok=True)
            return {}
        tmp = out / ".chosen.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(Path(chosen["artifact"]), tmp)
        shutil.rmtree(out / "chosen", ignore_errors=True)
        os.replace(tmp, out / "chosen")
        target = self.targets[self.labels.index(chosen["runtime"])]
        write_text_atomic(out / "chosen-recipe.yaml",
                          chosen_recipe(self.recipe, chosen, target, str(self.recipe.source)))
        return {"chosen": out / "chosen", "recipe": out / "chosen-recipe.yaml"}

    def write_report(self, rows: list[dict], pareto: list[dict], chosen: dict | None, stopped: str) -> dict:
        """The report of the measured trials, with the search's section (progress plot, Pareto
        set); return its paths ({} when no trial was measured)."""
        from edgeopt.core.files import write_bytes_atomic

        by_number = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        attrs = [by_number[r["number"]].user_attrs for r in rows if r["state"] == "complete" and "repeat_of" not in r]
        entries = [a["entry"] for a in attrs if "entry" in a]
        if not entries:
            return {}
        meta = {"model": self.recipe.model, "recipe": str(self.recipe.source), "task": self.recipe.task,
                "search": self.study.study_name,
                "chosen": chosen["variant"] + "/" + chosen["runtime"] if chosen else None}
        report = make_report(entries, self.machine, task_info(self.task), None, meta=meta)
        png = _progress_png(rows)
        write_bytes_atomic(self.out / "progress.png", png)
        write_report(report, self.out, plot=True, sections=[search_section(rows, pareto, chosen, stopped, png)])
        return {"report": self.out / "report.json", "progress": self.out / "progress.png",
                "html": self.out / "index.html"}


def _finished(trial) -> bool:
    """Whether ``trial`` has its answer: complete, or pruned (failures are told pruned too)."""
    from optuna.trial import TrialState

    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED)


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


def choose(rows: list[dict], tolerance: float = 0.0) -> tuple[list[dict], dict | None, list[dict]]:
    """search.json's rows -> (Pareto set of the feasible trials, the chosen trial, the closest infeasible ones). The
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


def search_section(rows: list[dict], pareto: list[dict], chosen: dict | None, stopped: str, png: bytes):
    """The search's section of the report: how it stopped, the trial counts, the choice, the
    Pareto set and the progress plot (``progress.png``, embedded in index.html)."""
    import base64
    import html

    choice = _fmt_row(chosen) if chosen else "none meets the constraints"
    lines = [f"- {_fmt_row(r)}" for r in pareto]
    md = "\n".join([f"Stopped: {stopped}. Trials: {_counts_text(counts(rows))}. Chosen: {choice}.", "",
                    "Pareto set (feasible trials):", "", *(lines or ["- none"]), "",
                    "![objective values over trials](progress.png)", ""])
    items = "".join(f"<li>{html.escape(_fmt_row(r))}</li>" for r in pareto) or "<li>none</li>"
    img = base64.b64encode(png).decode("ascii")
    body = (f'<p>Stopped: {html.escape(stopped)}. Chosen: {html.escape(choice)}.</p>'
            f'<p>Pareto set (feasible trials):</p><ul>{items}</ul>'
            f'<p><img src="data:image/png;base64,{img}" alt="objective values over trials" '
            'style="max-width:100%"></p>')
    return Section(title="Search", anchor="search", html=body, markdown=md)
