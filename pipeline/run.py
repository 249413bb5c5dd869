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
from .report_html import write_report
from .report_schema import make_report
from .report_text import text_table
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
    data = {"model": recipe.model, "weights": recipe.weights, "task": recipe.task, "input_shape": recipe.input_shape,
            "seed": recipe.seed, "train": recipe.train, "bench": recipe.bench, "evaluate": recipe.evaluate,
            "variants": {k: [(s.name, _jsonable(s.config)) for s in v] for k, v in recipe.variants.items()},
            "targets": [(t.runtime, t.target, _jsonable(t.build)) for t in recipe.targets]}
    if recipe.task_outputs is not None:  # how outputs are judged changes the entries
        data["task_outputs"] = recipe.task_outputs
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def target_label(target: Target) -> str:
    """The second half of a row's key (``Target.label``)."""
    return target.label


def run_recipe(recipe: str | os.PathLike | Recipe, out: str | os.PathLike,
               log: Callable[[str], None] = print, nproc: int = 1) -> dict:
    """Run ``recipe`` into ``out``; return the report (also written as report.json/.md/.png/.html).

    ``nproc``: processes for the distill steps (torchrun, data-parallel; see ``ec.distill``).
    Nothing is written into ``out`` until the model and the task have loaded.
    """
    import torch

    from .measure import collect_outputs, model_outputs, reference_outputs
    from .models import load_model
    from .tasks import load_task

    if not isinstance(nproc, int) or nproc < 1:
        raise InputError(f"nproc must be an integer >= 1, got {nproc!r}")
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    bench = BenchConfig(**recipe.bench)
    torch.set_num_threads(bench.resolved_threads)

    onnx_model = is_onnx_model(recipe.model)
    if onnx_model:
        check_onnx_recipe(recipe)
        loaded = load_onnx_model(recipe.model, recipe.input_shape)
    else:
        loaded = load_model(recipe.model, seed=recipe.seed, weights=recipe.weights, input_shape=recipe.input_shape)
    shape = tuple(loaded.input_shape or ())
    if not shape:
        raise InputError(f"{recipe.source}: model {recipe.model!r} does not say its input shape; "
                         "add input_shape to the recipe")
    task = load_task(recipe.task, seed=recipe.seed, input_shape=shape, outputs=recipe.task_outputs)
    if task.test.x.shape[1:] != shape[1:]:
        raise InputError(f"{recipe.source}: task {recipe.task!r} gives inputs of shape "
                         f"{task.test.x.shape[1:]}, the model takes {shape[1:]}")
    for variant, steps in recipe.variants.items():
        for step in steps:
            if getattr(step.config, "max_accuracy_drop", None) is not None and not task.labelled:
                raise InputError(f"{recipe.source}: variant {variant!r}: max_accuracy_drop needs labels and "
                                 f"task {recipe.task!r} has none; use min_agreement")
    if not onnx_model:  # a list or dict output would fail in training, after out/ was made
        from .output_check import TRAINING_STEPS, require_tensor_output

        trains = [s.name for steps in recipe.variants.values() for s in steps if s.name in TRAINING_STEPS]
        if task.labelled and not (recipe.weights or str(recipe.model).endswith(".pt2")):
            trains.insert(0, f"training the base model on task {recipe.task!r}")
        if trains:
            require_tensor_output(loaded.module, shape, trains[0], f"{recipe.source}: model {recipe.model!r}")
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
    if onnx_model:
        base = loaded.prepare(out / "base-model", log)
        from edgeopt.runtimes import load

        fp32_runner = load(base, threads=1)
        references = collect_outputs(fp32_runner.run, task.test.x)  # every output, for output_quality
        reference = references[0]
        fp32_outputs = lambda x: _onnx_outputs(base, x)  # noqa: E731
    else:
        base = _base_model(loaded.module, task, recipe, out, log)
        references = model_outputs(base, task.test.x)  # every output, for output_quality
        reference = references[0]
        fp32_outputs = lambda x: reference_outputs(base, x)  # noqa: E731
    from .evaluate import EvaluateConfig, Evaluation

    evaluation = Evaluation(task, reference, fp32_outputs, EvaluateConfig(**recipe.evaluate), out=out)
    study = _Study(recipe, task, base, example, reference, bench, out, log, nproc, evaluation)
    study.references = references

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
        elif target.runtime == "executorch" and any(s.kind.final and (s.name != "quantize" or s.config.engine != "edgeopt")
                                                    for s in steps):
            # an NNCF variant too: its row would be PT2E's int8 under NNCF's name
            log(f"{where}: skipped: executorch quantizes with its own PT2E flow; it cannot run "
                + ", ".join(f"{s.name} (engine {s.config.engine})" if s.name == "quantize" else s.name
                            for s in steps if s.kind.final) + "'s ONNX output")
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
    if not entries:
        raise InputError(f"{recipe.source}: no variant/target pair can run (a torch target cannot run "
                         "ONNX-level steps)")
    from edgeopt.runtimes import machine_fingerprint

    task_info = {"name": task.name, "metric": task.metric, "higher_is_better": task.higher_is_better,
                 "labelled": task.labelled}
    meta = {"model": recipe.model, "recipe": str(recipe.source), "task": recipe.task}
    # reference None: fp32/onnxruntime when it ran, else the first variant that did
    report = make_report(entries, machine_fingerprint(bench.resolved_threads), task_info, None, meta=meta)
    write_report(report, out, plot=True)
    log("")
    log(text_table(report))
    return report


def is_onnx_model(spec: str) -> bool:
    """Whether a recipe's ``model`` is an ONNX file or an ONNX artifact folder."""
    p = Path(spec)
    return spec.endswith(".onnx") or (p.is_dir() and (p / "manifest.json").is_file()
                                      and json.loads((p / "manifest.json").read_text()).get("format") == "onnx")


def check_onnx_recipe(recipe: Recipe) -> None:
    """An ONNX model takes ONNX-level steps and non-torch targets only; say so before any work."""
    for variant, steps in recipe.variants.items():
        for step in steps:
            if step.kind.level != "onnx":
                raise InputError(f"{recipe.source}: variant {variant!r}: step {step.name!r} needs a torch model, "
                                 f"and {recipe.model!r} is an ONNX model; use ONNX-level steps (quantize) or "
                                 "give the torch model (zoo:NAME, module.path:factory, .pt2)")
    if any(t.runtime == "torch" for t in recipe.targets):
        raise InputError(f"{recipe.source}: runtime torch cannot run the ONNX model {recipe.model!r}; "
                         "use onnxruntime or tvm")
    if recipe.weights:
        raise InputError(f"{recipe.source}: 'weights' is for torch models; {recipe.model!r} holds its own")


class _OnnxModel:
    """A third-party ONNX model as a study's base: prepared (opset, constants, shapes) once."""

    def __init__(self, spec: str, input_shape):
        from edgeopt.runtimes.artifact import model_input
        from edgeopt.runtimes.onnx_file import load_onnx, onnx_io

        from edgeopt.compile.onnx_shapes import resolve_input_shapes

        self.path, self.history, _ = model_input(spec, "onnx", "run")
        inputs, _ = onnx_io(load_onnx(self.path))
        if len(inputs) != 1:
            raise InputError(f"model {spec!r} has {len(inputs)} inputs; a study feeds models with one input")
        # every variant, FLOP count and target (TVM builds too) takes the base model's shapes:
        # dynamic dims other than the batch need the recipe's input_shape, and the base gets them
        self.shapes = resolve_input_shapes(inputs, input_shape, option="input_shape in the recipe")
        self.given = input_shape is not None
        shape = self.shapes[inputs[0].name]
        self.input_shape = tuple(d if isinstance(d, int) else 1 for d in shape)  # a dynamic batch -> 1
        self.module = None

    def prepare(self, folder: Path, log):
        """The prepared model as an artifact folder (the fp32 variant and every step's input)."""
        import onnx

        from edgeopt.compile.onnx_prepare import prepare_onnx
        from edgeopt.runtimes.artifact import load_artifact, write_artifact
        from edgeopt.runtimes.onnx_file import onnx_io

        if (folder / "manifest.json").is_file():
            return load_artifact(folder)
        model = prepare_onnx(self.path, input_shapes=self.shapes if self.given else None)
        inputs, outputs = onnx_io(model)
        record = {"name": "prepare", "config": {"source": str(self.path),
                                                **({"input_shape": self.shapes} if self.given else {})},
                  "metrics": {"opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))}}
        log(f"base model: {self.path} prepared (opset upgrade, constants folded, shapes inferred)")
        return write_artifact(folder, lambda d: onnx.save(model, str(d / "model.onnx")), format="onnx",
                              files=["model.onnx"], inputs=inputs, outputs=outputs,
                              history=[*self.history, record])


def load_onnx_model(spec: str, input_shape) -> _OnnxModel:
    return _OnnxModel(spec, input_shape)


def _onnx_outputs(artifact, x: np.ndarray) -> np.ndarray:
    from edgeopt.runtimes import load

    from .tasks import collect

    runner = load(artifact, threads=1)
    return collect(lambda a: runner.run(a)[0], x)


def _base_model(module, task, recipe: Recipe, out: Path, log):
    """The model every variant starts from: trained on the task (cached in ``out``), or as given
    for unlabelled tasks and for models that come with their weights (``weights:`` or ``.pt2``)."""
    import torch

    from .tasks import TrainConfig, train

    if not task.labelled:
        return module.eval()
    if recipe.weights or str(recipe.model).endswith(".pt2"):
        log(f"base model: {recipe.model} as given ({recipe.weights or 'weights in the .pt2 file'}), not retrained")
        return module.eval()
    cache = out / "base-model" / "state_dict.pt"
    if cache.exists():
        # Our own file, and weights_only=True loads tensors, never arbitrary objects.
        module.load_state_dict(torch.load(cache, weights_only=True))
        log(f"base model: reused the weights trained in an earlier run ({cache})")
        return module.eval()
    log(f"base model: training {recipe.model} on {task.name}")
    trained = train(module, task, TrainConfig(**recipe.train))
    from .measure import reference_outputs

    value = task.score(reference_outputs(trained, task.test.x))
    log(f"base model: {task.metric} {value * 100:.2f}% on the test split" if task.metric == "top1"
        else f"base model: {task.metric} {value:.4g} on the test split")
    with atomic_file(cache) as tmp:
        torch.save(trained.state_dict(), tmp)
    return trained


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


class _Study:
    """Builds variants (sharing step prefixes in memory) and measures them on targets."""

    def __init__(self, recipe, task, base, example, reference, bench, out: Path, log, nproc: int,
                 evaluation=None, cache: Path | None = None, latency: Callable | None = None):
        """``cache``: a folder where torch-level step prefixes are kept on disk (keyed by the base
        model's weights and the steps' configs) and where a variant's finished ONNX artifact is
        reused, so another process (a resumed search) does not retrain; ``None`` keeps them in
        memory only (``edgeopt run``). ``latency(runner, artifact, target)``: returns a
        ``latency_ms`` report object in place of timing ``runner`` (``edgeopt.pipeline.search``
        caches measurements with it)."""
        self.recipe, self.task, self.base, self.example = recipe, task, base, example
        self.evaluation = evaluation
        self.reference, self.bench, self.out, self.log = reference, bench, out, log
        self.references = None  # every fp32 output (``reference`` is the first), when known
        self.data = StepData(example=example, task=task, teacher=base, nproc=nproc)
        self.models: dict = {(): base}   # step-prefix key -> module or the exception it raised
        self.onnx: dict = {}             # variant name -> (module, artifact) or exception
        self.cache, self.latency = cache, latency
        self.applied: list = []          # (step name, config) of every torch-level step computed here
        self._base_digest = None

    def prefix_digest(self, key: tuple) -> str:
        """A torch-level step prefix's cache key: the base model's weights and the steps' configs."""
        if self._base_digest is None:
            h = hashlib.sha256(str(self.recipe.model).encode())
            for name, tensor in sorted(self.base.state_dict().items()):
                h.update(name.encode())
                h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._base_digest = h.hexdigest()
        return hashlib.sha256(json.dumps([self._base_digest, key]).encode()).hexdigest()[:20]

    def _cached_step(self, key: tuple, step: Step, model):
        import torch

        path = self.cache / "steps" / f"{self.prefix_digest(key)}.pt" if self.cache else None
        if path is not None and path.is_file():
            # edgeopt's own file, written below: a whole module (steps change its structure)
            return torch.load(path, weights_only=False)
        self.applied.append(key[-1])
        out = apply_step(step, model, self.data).output
        if path is not None:
            try:
                with atomic_file(path) as tmp:
                    torch.save(out, tmp)
            except Exception as e:  # a module that cannot be pickled is kept in memory only
                self.log(f"step cache: {step.name} result not saved ({type(e).__name__}: {e})")
        return out

    def torch_model(self, steps: list[Step]):
        key: tuple = ()
        model = self.base
        for step in steps:
            if step.kind.level != "torch":
                break
            key = key + ((step.name, json.dumps(dataclasses.asdict(step.config), sort_keys=True, default=str)),)
            if key not in self.models:
                try:
                    self.models[key] = self._cached_step(key, step, model)
                except Exception as e:
                    self.models[key] = e  # every variant sharing this prefix fails the same way
            model = self.models[key]
            if isinstance(model, Exception):
                raise model
        return model

    def onnx_artifact(self, name: str, steps: list[Step]):
        """The variant's final ONNX artifact (exported, then the ONNX-level step if any)."""
        from edgeopt.compile import ExportConfig, export
        from edgeopt.core.result import StepResult

        if name not in self.onnx and self.cache is not None:
            kept = self._kept_artifact(name, steps)
            if kept is not None:
                self.onnx[name] = kept
        if name not in self.onnx:
            try:
                folder = self.out / "variants" / _slug(name)
                if not hasattr(self.base, "state_dict"):  # an ONNX model: nothing to export
                    model = self.base
                    result = StepResult(self.base, (self.base.history or [{}])[-1], self.base.history[:-1])
                else:
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

    def _kept_artifact(self, name: str, steps: list[Step]):
        """A variant's final ONNX artifact written by an earlier process, or None."""
        from edgeopt.runtimes.artifact import load_artifact

        folder = self.out / "variants" / _slug(name)
        final = [s.name for s in steps if s.kind.final]
        where = folder / (final[0] if final else "onnx")
        if not (where / "manifest.json").is_file() or not hasattr(self.base, "state_dict"):
            return None
        try:
            art = load_artifact(where)
        except Exception:
            return None  # damaged: built again
        return self.torch_model(steps), art

    def _fp32_onnx(self, folder: Path, art) -> Path:
        """The variant's float ONNX model (FLOPs are counted on it, not on the int8 graph)."""
        exported = folder / "onnx" / "model.onnx"
        return exported if exported.is_file() else self.base.model_file

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
        elif target.runtime == "openvino":
            run_art = art
            runner = load(art, runtime="openvino", threads=threads, precision=target.precision or "default")
        elif target.runtime == "executorch":
            from edgeopt.compile.executorch_export import to_executorch

            # ExecuTorch's own int8: PT2E with XNNPACK's quantizer, calibrated on the task's
            # calibration split as many samples as the variant's quantize step would take
            quant = next((s.config for s in steps if s.name == "quantize"), None)
            calib = None
            if quant is not None:
                calib = self.task.calib.x[:quant.max_calibration_samples or len(self.task.calib.x)]
            run_art = to_executorch(model, self.example, folder / ("executorch-int8" if calib is not None else "executorch"),
                                    calibration=calib, history=art.history)
            runner = load(run_art, threads=threads)
        else:
            from edgeopt.compile import build

            run_art = build(art, target.build, out=folder / _slug(target_label(target))).artifact
            runner = load(run_art, threads=threads)
        if self.latency is not None:
            runner = _TimedRunner(runner, lambda r: self.latency(r, art, target))
        where = runtime_target(target.runtime, target.build)
        if target.runtime == "openvino":  # the precision the plugin chose (bf16 by itself on some CPUs)
            where = f"{where}/{runner.chosen_precision}"
        entry = measure_entry(
            name=name, steps=steps, runtime=target.runtime,
            target=where, runner=runner, run_artifact=run_art,
            model=model, fp32_onnx=self._fp32_onnx(folder, art), task=self.task,
            reference=self.reference, example=self.example, bench=self.bench, evaluation=self.evaluation,
            references=self.references)
        if target.runtime == "openvino":
            entry["runtime_version"] = runner.version
        elif target.runtime == "executorch":
            entry["runtime_version"] = run_art.manifest["runtime_version"].split()[-1]
        return entry


class _TimedRunner:
    """A runner whose ``benchmark`` answers from a function (a cache of earlier measurements)."""

    def __init__(self, runner, latency: Callable):
        self._runner, self._latency = runner, latency

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def benchmark(self, inputs, warmup: int = 10, repeat: int = 100):
        report = self._latency(self._runner)

        class _Stats:
            @staticmethod
            def to_report():
                return dict(report)

        class _Result:
            latency = _Stats()

        return _Result()
