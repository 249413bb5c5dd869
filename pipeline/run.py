"""Run a recipe: every variant on every target, resumable, into one report.

The recipe, its model and its task are loaded and checked by ``edgeopt.pipeline.study.load_inputs``;
each variant of the recipe is then built and measured on each target by the same
``edgeopt.pipeline.study.Study`` that ``edgeopt search`` drives: the torch-level steps applied to
the task-trained model in order (steps a variant shares with an earlier one are reused from
memory), the result exported (parity checked), the ONNX-level step when the variant has one, and
the report entry measured on the target (``edgeopt.pipeline.measure``).

A variant or target that fails is recorded in the report with its reason (the traceback goes to
``failures/<variant>--<target>.txt``) and the study goes on; ``run_recipe`` returns the report
and the CLI exits 3 when any pair failed. After every measurement ``state.json`` is rewritten
atomically, so an interrupted run (Ctrl-C or a kill) keeps what was finished and the next run
resumes where it stopped; rows kept from an earlier run are marked ``"resumed": true``. Failed
pairs are tried again by the next run.

Example:
    >>> from edgeopt.pipeline.run import run_recipe  # doctest: +SKIP
    >>> report = run_recipe("benchmarks/digits.yaml", "build/digits-study")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import os
import time
import traceback
from pathlib import Path

from edgeopt.core.errors import InputError
from edgeopt.core.files import write_json_atomic, write_text_atomic
from edgeopt.core.result import reporter

from .measure import failed_entry, runtime_target
from .recipe import Recipe
from .report_html import write_report
from .report_schema import make_report
from .report_text import text_table
from .study import Study, StudyInputs, load_inputs, recipe_fingerprint, slug, task_info

STATE = "state.json"


def run_recipe(recipe: str | os.PathLike | Recipe, out: str | os.PathLike, progress=print, nproc: int = 1) -> dict:
    """Run ``recipe`` into ``out``; return the report (also written as report.json/.md/.png/.html).

    ``progress``: the study's lines (``None``, ``True`` or a callable, as everywhere; default
    ``print``). ``nproc``: processes for the distill steps (torchrun, data-parallel; see
    ``ec.distill``). Nothing is written into ``out`` until the model and the task have loaded.
    """
    from edgeopt.runtimes import machine_fingerprint

    say = reporter(progress)
    inputs = load_inputs(recipe, nproc=nproc)
    recipe = inputs.recipe
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state, earlier = _load_state(out / STATE, recipe, say)
    study = _study(inputs, out, progress, nproc)
    keys = [(name, t) for name in recipe.variants for t in recipe.targets]
    for i, (name, target) in enumerate(keys, 1):
        key = f"{name}/{target.label}"
        if key in state["done"]:
            say(f"[{i}/{len(keys)}] {key}: finished in an earlier run, kept")
            continue
        state["done"][key] = _run_pair(study, name, target, f"[{i}/{len(keys)}] {key}", out, say)
        write_json_atomic(out / STATE, state)

    entries = []
    for n, t in keys:
        key = f"{n}/{t.label}"
        entry = state["done"].get(key)
        if entry is not None:
            entry = copy.deepcopy(entry)
            if key in earlier:
                entry["resumed"] = True
            entries.append(entry)
    if not entries:
        raise InputError(f"{recipe.source}: no variant/target pair can run (a torch target cannot run "
                         "ONNX-level steps)")
    meta = {"model": recipe.model, "recipe": str(recipe.source), "task": recipe.task}
    # reference None: fp32/onnxruntime when it ran, else the first variant that did
    report = make_report(entries, machine_fingerprint(inputs.bench.resolved_threads), task_info(inputs.task), None,
                         meta=meta)
    write_report(report, out, plot=True)
    say("")
    say(text_table(report))
    return report


def _load_state(path: Path, recipe: Recipe, say) -> tuple[dict, set]:
    """(state.json's content for this recipe, the keys an earlier run finished); failed pairs
    are dropped so that they run again."""
    fingerprint = recipe_fingerprint(recipe)
    state = {"fingerprint": fingerprint, "done": {}}
    if path.exists():
        previous = json.loads(path.read_text())
        if previous.get("fingerprint") == fingerprint:
            state = previous
            state["done"] = {k: v for k, v in state["done"].items()
                             if v is None or v.get("status") != "failed"}  # failed pairs run again
        else:
            say(f"{path} is from a different recipe; starting over")
    return state, set(state["done"])


def _study(inputs: StudyInputs, out: Path, progress, nproc: int) -> Study:
    """The study of ``edgeopt run``: the base model in ``out``, every entry evaluated."""
    from .evaluate import EvaluateConfig, Evaluation

    base = inputs.base(out, progress)
    evaluation = Evaluation(inputs.task, base.references[0], base.fp32_outputs,
                            EvaluateConfig(**inputs.recipe.evaluate), out=out)
    return Study(inputs, base, out, progress=progress, nproc=nproc, evaluation=evaluation)


def _skip_reason(steps: list, runtime: str) -> str | None:
    """Why a variant cannot run on ``runtime`` at all, or None."""
    if runtime == "torch" and any(s.kind.final for s in steps):
        return "the torch runtime cannot run an ONNX-level step's output"
    if runtime == "executorch" and any(s.kind.final and (s.name != "quantize" or s.config.engine != "edgeopt")
                                       for s in steps):
        # an NNCF variant too: its row would be PT2E's int8 under NNCF's name
        return ("executorch quantizes with its own PT2E flow; it cannot run "
                + ", ".join(f"{s.name} (engine {s.config.engine})" if s.name == "quantize" else s.name
                            for s in steps if s.kind.final) + "'s ONNX output")
    return None


def _run_pair(study: Study, name: str, target, where: str, out: Path, say) -> dict | None:
    """One variant on one target: its report entry, a failed entry (the traceback written to
    ``out/failures/``) or None when the pair cannot run."""
    steps = study.recipe.variants[name]
    skip = _skip_reason(steps, target.runtime)
    if skip is not None:
        say(f"{where}: skipped: {skip}")
        return None
    say(f"{where}: {' -> '.join(s.name for s in steps) or 'no steps'}")
    t0 = time.perf_counter()
    try:
        entry = study.measure(name, steps, target)
        say(f"{where}: done in {time.perf_counter() - t0:.0f} s")
        return entry
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # one variant's failure must not end the study
        entry = failed_entry(name=name, steps=steps, runtime=target.runtime,
                             target=runtime_target(target.runtime, target.build), error=e)
        trace = out / "failures" / f"{slug(name)}--{slug(target.label)}.txt"
        write_text_atomic(trace, "".join(traceback.format_exception(e)))
        say(f"{where}: FAILED: {entry['error']} (details: {trace})")
        return entry
