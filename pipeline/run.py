"""Run a recipe: every variant on every target, resumable, into one report.

For each variant the torch-level steps are applied to the task-trained model in order (steps a
variant shares with an earlier one are reused from memory), the result is exported (parity
checked), quantized when the variant says so, and measured on each target: latency (each
runtime timed in its own block), size of the artifact it runs, params, FLOPs, top-1 accuracy on
the task's test split (or agreement only, for unlabelled tasks) and top-1 agreement with the fp32
model. After every measurement ``state.json`` is rewritten atomically, so an interrupted run
(Ctrl-C or a kill) keeps what was finished and the next run resumes where it stopped.

Example:
    >>> from edgeopt.pipeline.run import run_recipe  # doctest: +SKIP
    >>> report = run_recipe("benchmarks/digits.yaml", "build/digits-study")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Callable

import numpy as np

from edgeopt.core.files import write_json_atomic
from edgeopt.core.errors import InputError

from .recipe import Recipe, Step, Target, load_recipe
from .report import make_report, text_table, write_report

STATE = "state.json"


def recipe_fingerprint(recipe: Recipe) -> str:
    """What must match for a previous run's results to be reused."""
    data = {"model": recipe.model, "task": recipe.task, "input_shape": recipe.input_shape,
            "seed": recipe.seed, "train": recipe.train, "bench": recipe.bench,
            "variants": {k: [(s.name, s.params) for s in v] for k, v in recipe.variants.items()},
            "targets": [(t.runtime, t.target) for t in recipe.targets]}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_recipe(recipe: str | os.PathLike | Recipe, out: str | os.PathLike,
               log: Callable[[str], None] = print, nproc: int = 1) -> dict:
    """Run ``recipe`` into ``out``; return the report (also written as report.json/.md/.png/.html).

    ``nproc``: processes for the distill steps (torchrun, data-parallel; see ``ec.distill``).
    """
    import torch

    from edgeopt.pipeline.models import load_model
    from edgeopt.pipeline.study import BenchConfig

    from .tasks import load_task

    if not isinstance(nproc, int) or nproc < 1:
        raise InputError(f"nproc must be an integer >= 1, got {nproc!r}")
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = recipe_fingerprint(recipe)
    state_path = out / STATE
    state = {"fingerprint": fingerprint, "done": {}}
    if state_path.exists():
        previous = json.loads(state_path.read_text())
        if previous.get("fingerprint") == fingerprint:
            state = previous
        else:
            log(f"{state_path} is from a different recipe; starting over")
    bench = BenchConfig(**recipe.bench)
    torch.set_num_threads(bench.resolved_threads)

    loaded = load_model(recipe.model, seed=recipe.seed)
    shape = tuple(recipe.input_shape or loaded.input_shape or ())
    if not shape:
        raise InputError(f"{recipe.source}: model {recipe.model!r} does not say its input shape; "
                         "add input_shape to the recipe")
    task = load_task(recipe.task, seed=recipe.seed, input_shape=shape)
    if nproc > 1:  # refuse a process count the data cannot split before any work is done
        import edgeopt.compress as ec
        from edgeopt.compress.distill import check_split

        for variant, steps in recipe.variants.items():
            for step in steps:
                if step.name == "distill":
                    try:
                        check_split(ec.DistillConfig(**step.params), len(task.train.x), nproc)
                    except InputError as e:
                        raise InputError(f"--nproc {nproc}, variant {variant!r}: {e}") from None
    if task.test.x.shape[1:] != shape[1:]:
        raise InputError(f"{recipe.source}: task {recipe.task!r} gives inputs of shape "
                         f"{task.test.x.shape[1:]}, the model takes {shape[1:]}")
    example = task.test.x[:1]
    base = _base_model(loaded.module, task, recipe, out, log)
    from .tasks import torch_logits

    reference_preds = torch_logits(base, task.test.x).argmax(axis=1)
    study = _Study(recipe, task, base, example, reference_preds, bench, out, log)
    study.nproc = nproc

    keys = [(name, t) for name in recipe.variants for t in recipe.targets]
    for i, (name, target) in enumerate(keys, 1):
        key = f"{name}/{target.label}"
        if key in state["done"]:
            log(f"[{i}/{len(keys)}] {key}: finished in an earlier run, kept")
            continue
        steps = recipe.variants[name]
        if target.runtime == "torch" and any(s.name == "quantize" for s in steps):
            log(f"[{i}/{len(keys)}] {key}: skipped: the torch runtime cannot run an ONNX-quantized model")
            state["done"][key] = None
        else:
            log(f"[{i}/{len(keys)}] {key}: {' -> '.join(s.name for s in steps) or 'no steps'}")
            t0 = time.perf_counter()
            state["done"][key] = study.measure(name, steps, target)
            log(f"[{i}/{len(keys)}] {key}: done in {time.perf_counter() - t0:.0f} s")
        write_json_atomic(state_path, state)

    entries = [state["done"][f"{n}/{t.label}"] for n, t in keys]
    entries = [copy.deepcopy(e) for e in entries if e is not None]
    if not entries:
        raise InputError(f"{recipe.source}: no variant/target pair could run")
    from edgeopt.runtimes import machine_fingerprint

    reference = "fp32/onnxruntime" if any(e["name"] == "fp32" and e["runtime"] == "onnxruntime"
                                          for e in entries) else f"{entries[0]['name']}/{entries[0]['runtime']}"
    task_info = {"name": task.name, "metric": task.metric}
    report = make_report(entries, machine_fingerprint(bench.resolved_threads), task_info, reference)
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
    from edgeopt.core.files import atomic_file

    with atomic_file(cache) as tmp:
        torch.save(trained.state_dict(), tmp)
    return trained


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


class _Study:
    """Builds variants (sharing step prefixes in memory) and measures them on targets."""

    def __init__(self, recipe, task, base, example, reference_preds, bench, out: Path, log):
        self.recipe, self.task, self.base, self.example = recipe, task, base, example
        self.reference_preds, self.bench, self.out, self.log = reference_preds, bench, out, log
        self.models: dict = {(): base}
        self.nproc = 1
        self.onnx: dict = {}

    def torch_model(self, steps: list[Step]):
        import edgeopt.compress as ec

        key = ()
        model = self.base
        for step in steps:
            if step.name == "quantize":
                break
            key = key + ((step.name, json.dumps(step.params, sort_keys=True, default=str)),)
            if key in self.models:
                model = self.models[key]
                continue
            cfg = {"lowrank": ec.LowRankConfig, "prune": ec.PruneConfig,
                   "distill": ec.DistillConfig}[step.name](**step.params)
            if step.name == "lowrank":
                model = ec.lowrank(model, cfg, self.example, calibration=self.task.calib.x).output
            elif step.name == "prune":
                model = ec.prune(model, cfg, self.example).output
            else:
                model = ec.distill(model, self.base, self.task, cfg, nproc=self.nproc)
            self.models[key] = model
        return model

    def onnx_artifact(self, name: str, steps: list[Step]):
        """The variant's final ONNX artifact (exported, then quantized if asked)."""
        import edgeopt.compress as ec
        from edgeopt.compile import export

        if name in self.onnx:
            return self.onnx[name]
        folder = self.out / "variants" / _slug(name)
        model = self.torch_model(steps)
        checks = [self.task.test.x[i:i + 1] for i in range(8)]
        art = export(model, self.example, folder / "onnx", check_inputs=checks).artifact
        q = [s for s in steps if s.name == "quantize"]
        if q:
            cfg = ec.QuantizeConfig(**q[0].params)
            eval_data = (self.task.val if self.task.labelled else self.task.val.x) if cfg.has_budget else None
            art = ec.quantize(art.path, self.task.calib, cfg, folder / "int8", eval_data=eval_data,
                              history=art.history).artifact
        self.onnx[name] = (model, art)
        return model, art

    def measure(self, name: str, steps: list[Step], target: Target) -> dict:
        from edgeopt.compress import onnx_flops
        from edgeopt.runtimes import load

        from .study import save_torch_artifact
        from .tasks import predict

        model, art = self.onnx_artifact(name, steps)
        folder = self.out / "variants" / _slug(name)
        threads = self.bench.resolved_threads
        if target.runtime == "torch":
            from edgeopt.runtimes.torch_runner import TorchRunner
            import torch

            run_art = save_torch_artifact(model, self.example, folder / "torch")
            runner = TorchRunner(model, example=[torch.from_numpy(self.example)], threads=threads)
        elif target.runtime == "onnxruntime":
            run_art = art
            runner = load(art, threads=threads)
        else:
            from edgeopt.compile.tvm_build import build

            run_art = build(art.model_file, target=target.target or "cpu",
                            out=folder / _slug(target.label), history=art.history)
            runner = load(run_art, threads=threads)
        result = runner.benchmark(self.example, warmup=self.bench.warmup, repeat=self.bench.repeat)
        preds = predict(lambda a: runner.run(a)[0], self.task.test.x)
        from edgeopt.compress import count_params

        fp32_onnx = self.out / "variants" / _slug(name) / "onnx" / "model.onnx"
        return {
            "name": name,
            "steps": [{s.name: s.params} for s in steps],
            "runtime": target.runtime,
            "target": target.target_name if target.runtime == "tvm" else "cpu",
            "size_bytes": run_art.size_bytes(),
            "params": count_params(model),
            "flops": onnx_flops(fp32_onnx),
            "latency_ms": result.latency.to_report(),
            "accuracy": self.task.score(preds) if self.task.labelled else None,
            "agreement": float(np.mean(preds == self.reference_preds)),
            "predictions_sha256": hashlib.sha256(preds.astype(np.int64).tobytes()).hexdigest()[:16],
            "artifact": str(run_art.path),
        }
