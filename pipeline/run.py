"""Run a recipe: every variant on every target, resumable, into one report.

For each variant the torch-level steps are applied to the task-trained model in order (steps a
variant shares with an earlier one are reused from memory), the result is exported (parity
checked), the ONNX-level step runs when the variant has one, and the result is measured on each
target (``edgeopt.pipeline.measure``). Steps come from the registry
(``edgeopt.pipeline.steps``) with the configs the recipe loader built.

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
import dataclasses
import hashlib
import json
import os
import re
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeopt.core.errors import InputError
from edgeopt.core.files import atomic_file, write_json_atomic, write_text_atomic

from .measure import BenchConfig, failed_entry, measure_entry, runtime_target
from .recipe import Recipe, Target, load_recipe
from .report import make_report, text_table, write_report
from .steps import Step, StepData, apply_step

STATE = "state.json"


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def recipe_fingerprint(recipe: Recipe) -> str:
    """What must match for a previous run's results to be reused."""
    data = {"model": recipe.model, "task": recipe.task, "input_shape": recipe.input_shape,
            "seed": recipe.seed, "train": recipe.train, "bench": recipe.bench,
            "variants": {k: [(s.name, _jsonable(s.config)) for s in v] for k, v in recipe.variants.items()},
            "targets": [(t.runtime, t.target, _jsonable(t.build)) for t in recipe.targets]}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def target_label(target: Target) -> str:
    """``onnxruntime``, ``torch``, or ``tvm-<target>``: the second half of a row's key."""
    if target.runtime != "tvm":
        return target.runtime
    t = target.target
    name = "cpu" if t is None else t if isinstance(t, str) else t.get("kind", "custom")
    return f"tvm-{name}"


def run_recipe(recipe: str | os.PathLike | Recipe, out: str | os.PathLike,
               log: Callable[[str], None] = print, nproc: int = 1) -> dict:
    """Run ``recipe`` into ``out``; return the report (also written as report.json/.md/.png/.html).

    ``nproc``: processes for the distill steps (torchrun, data-parallel; see ``ec.distill``).
    Nothing is written into ``out`` until the model and the task have loaded.
    """
    import torch

    from .models import load_model
    from .tasks import load_task, torch_logits

    if not isinstance(nproc, int) or nproc < 1:
        raise InputError(f"nproc must be an integer >= 1, got {nproc!r}")
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    bench = BenchConfig(**recipe.bench)
    torch.set_num_threads(bench.resolved_threads)

    loaded = load_model(recipe.model, seed=recipe.seed, input_shape=recipe.input_shape)
    shape = tuple(loaded.input_shape or ())
    if not shape:
        raise InputError(f"{recipe.source}: model {recipe.model!r} does not say its input shape; "
                         "add input_shape to the recipe")
    task = load_task(recipe.task, seed=recipe.seed, input_shape=shape)
    if task.test.x.shape[1:] != shape[1:]:
        raise InputError(f"{recipe.source}: task {recipe.task!r} gives inputs of shape "
                         f"{task.test.x.shape[1:]}, the model takes {shape[1:]}")
    if nproc > 1:  # refuse a process count the data cannot split before any work is done
        from edgeopt.compress.distill import check_split

        for variant, steps in recipe.variants.items():
            for step in steps:
                if step.name == "distill":
                    try:
                        check_split(step.config, len(task.train.x), nproc)
                    except InputError as e:
                        raise InputError(f"--nproc {nproc}, variant {variant!r}: {e}") from None

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE
    fingerprint = recipe_fingerprint(recipe)
    state = {"fingerprint": fingerprint, "done": {}}
    if state_path.exists():
        previous = json.loads(state_path.read_text())
        if previous.get("fingerprint") == fingerprint:
            state = previous
            state["done"] = {k: v for k, v in state["done"].items()
                             if v is None or v.get("status") != "failed"}  # failed pairs run again
        else:
            log(f"{state_path} is from a different recipe; starting over")
    earlier = set(state["done"])

    example = task.test.x[:1]
    base = _base_model(loaded.module, task, recipe, out, log)
    reference_preds = torch_logits(base, task.test.x).argmax(axis=1)
    study = _Study(recipe, task, base, example, reference_preds, bench, out, log, nproc)

    keys = [(name, t) for name in recipe.variants for t in recipe.targets]
    failed = 0
    for i, (name, target) in enumerate(keys, 1):
        key = f"{name}/{target_label(target)}"
        where = f"[{i}/{len(keys)}] {key}"
        if key in state["done"]:
            log(f"{where}: finished in an earlier run, kept")
            continue
        steps = recipe.variants[name]
        if target.runtime == "torch" and any(s.kind.final for s in steps):
            log(f"{where}: skipped: the torch runtime cannot run an ONNX-level step's output")
            state["done"][key] = None
        else:
            log(f"{where}: {' -> '.join(s.name for s in steps) or 'no steps'}")
            t0 = time.perf_counter()
            try:
                state["done"][key] = study.measure(name, steps, target)
                log(f"{where}: done in {time.perf_counter() - t0:.0f} s")
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # one variant's failure must not end the study
                entry = failed_entry(name=name, steps=steps, runtime=target.runtime,
                                     target=runtime_target(target.runtime, target.build), error=e)
                state["done"][key] = entry
                failed += 1
                trace = out / "failures" / f"{_slug(name)}--{_slug(target_label(target))}.txt"
                write_text_atomic(trace, "".join(traceback.format_exception(e)))
                log(f"{where}: FAILED: {entry['error']} (details: {trace})")
        write_json_atomic(state_path, state)

    entries = []
    for n, t in keys:
        key = f"{n}/{target_label(t)}"
        entry = state["done"].get(key)
        if entry is not None:
            entry = copy.deepcopy(entry)
            if key in earlier:
                entry["resumed"] = True
            entries.append(entry)
    ok = [e for e in entries if e.get("status") != "failed"]
    if not ok:
        raise InputError(f"{recipe.source}: no variant/target pair could run: "
                         + "; ".join(f"{e['name']}/{e['runtime']}: {e['error']}" for e in entries))
    from edgeopt.runtimes import machine_fingerprint

    reference = "fp32/onnxruntime" if any(e["name"] == "fp32" and e["runtime"] == "onnxruntime"
                                          for e in ok) else f"{ok[0]['name']}/{ok[0]['runtime']}"
    task_info = {"name": task.name, "metric": task.metric}
    meta = {"model": recipe.model, "recipe": Path(recipe.source).name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    report = make_report(entries, machine_fingerprint(bench.resolved_threads), task_info, reference, meta=meta)
    write_report(report, out, plot=True)
    log("")
    log(text_table(report))
    return report


def _base_model(module, task, recipe: Recipe, out: Path, log):
    """The model every variant starts from: trained on the task (cached in ``out``), or as given
    for unlabelled tasks."""
    import torch

    from .tasks import TrainConfig, torch_logits, train

    if not task.labelled:
        return module.eval()
    cache = out / "base-model" / "state_dict.pt"
    if cache.exists():
        # Our own file, and weights_only=True loads tensors, never arbitrary objects.
        module.load_state_dict(torch.load(cache, weights_only=True))
        log(f"base model: reused the weights trained in an earlier run ({cache})")
        return module.eval()
    log(f"base model: training {recipe.model} on {task.name}")
    trained = train(module, task, TrainConfig(**recipe.train))
    acc = task.score(torch_logits(trained, task.test.x))
    log(f"base model: {acc * 100:.2f}% top-1 on the test split")
    with atomic_file(cache) as tmp:
        torch.save(trained.state_dict(), tmp)
    return trained


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


class _Study:
    """Builds variants (sharing step prefixes in memory) and measures them on targets."""

    def __init__(self, recipe, task, base, example, reference_preds, bench, out: Path, log, nproc: int):
        self.recipe, self.task, self.base, self.example = recipe, task, base, example
        self.reference_preds, self.bench, self.out, self.log = reference_preds, bench, out, log
        self.data = StepData(example=example, task=task, teacher=base, nproc=nproc)
        self.models: dict = {(): base}   # step-prefix key -> module or the exception it raised
        self.onnx: dict = {}             # variant name -> (module, artifact) or exception

    def torch_model(self, steps: list[Step]):
        key: tuple = ()
        model = self.base
        for step in steps:
            if step.kind.level != "torch":
                break
            key = key + ((step.name, json.dumps(dataclasses.asdict(step.config), sort_keys=True, default=str)),)
            if key not in self.models:
                try:
                    self.models[key] = apply_step(step, model, self.data).output
                except Exception as e:
                    self.models[key] = e  # every variant sharing this prefix fails the same way
            model = self.models[key]
            if isinstance(model, Exception):
                raise model
        return model

    def onnx_artifact(self, name: str, steps: list[Step]):
        """The variant's final ONNX artifact (exported, then the ONNX-level step if any)."""
        from edgeopt.compile import ExportConfig, export

        if name not in self.onnx:
            try:
                folder = self.out / "variants" / _slug(name)
                model = self.torch_model(steps)
                checks = [self.task.test.x[i:i + 1] for i in range(min(8, len(self.task.test.x)))]
                result = export(model, ExportConfig(), self.example, out=folder / "onnx", check_inputs=checks)
                for step in steps:
                    if step.kind.level == "onnx":
                        result = apply_step(step, result, self.data, out=folder / step.name)
                    elif step.kind.level == "torch-to-onnx":
                        # qat reads the variant's module (it trains it) and writes the ONNX
                        # itself; the fp32 export above stays the variant's reference
                        result = apply_step(step, model, self.data, out=folder / step.name)
                self.onnx[name] = (model, result.artifact)
            except Exception as e:
                self.onnx[name] = e
        if isinstance(self.onnx[name], Exception):
            raise self.onnx[name]
        return self.onnx[name]

    def measure(self, name: str, steps: list[Step], target: Target) -> dict:
        from edgeopt.runtimes import load

        from .measure import save_torch_artifact

        model, art = self.onnx_artifact(name, steps)
        folder = self.out / "variants" / _slug(name)
        threads = self.bench.resolved_threads
        if target.runtime == "torch":
            import torch

            from edgeopt.runtimes.torch_runner import TorchRunner

            run_art = save_torch_artifact(model, self.example, folder / "torch", history=art.history)
            # Time the eager module itself; the .pt2 artifact is what gets shipped.
            runner = TorchRunner(model, example=[torch.from_numpy(self.example)], threads=threads)
        elif target.runtime == "onnxruntime":
            run_art = art
            runner = load(art, threads=threads)
        else:
            from edgeopt.compile import build

            run_art = build(art, target.build, out=folder / _slug(target_label(target))).artifact
            runner = load(run_art, threads=threads)
        return measure_entry(
            name=name, steps=steps, runtime=target.runtime,
            target=runtime_target(target.runtime, target.build), runner=runner, run_artifact=run_art,
            model=model, fp32_onnx=folder / "onnx" / "model.onnx", task=self.task,
            reference_preds=self.reference_preds, example=self.example, bench=self.bench)
