"""The study: a recipe's model and task loaded and checked, the base model every variant starts
from, and variants built from registry steps and measured on targets.

Both drivers go through this module: ``edgeopt run`` (``edgeopt.pipeline.run``) walks the
recipe's hand-written variants, ``edgeopt search`` (``edgeopt.pipeline.search``) samples variants
from the recipe's ``search`` section. Each does the same four things here:

1. ``load_inputs(recipe)``: read the recipe, load the model and the task, and check them against
   each other (input shapes, labels for accuracy budgets, a single tensor output for training
   steps); nothing is written before both load.
2. ``inputs.base(folder)``: the base model (trained on a labelled task, cached in
   ``folder/base-model``; an ONNX model prepared once) and its fp32 outputs on the test split.
3. ``Study(inputs, base, out)``: ``study.measure(name, steps, target)`` applies the torch-level
   steps (prefixes shared with an earlier variant are reused), exports with parity, applies the
   final step, builds or loads the artifact for the target and returns the report entry
   (``edgeopt.pipeline.measure.measure_entry``, the only place an entry is built).
4. ``make_report(entries, ..., task_info(task))`` (``edgeopt.pipeline.report``).

Example:
    >>> from edgeopt.pipeline.study import slug, is_onnx_model
    >>> slug("prune 0.5/int8"), is_onnx_model("zoo:digits_cnn")
    ('prune_0.5_int8', False)
    >>> from edgeopt.pipeline.study import load_inputs, Study  # doctest: +SKIP
    >>> inputs = load_inputs("benchmarks/digits.yaml")  # doctest: +SKIP
    >>> study = Study(inputs, inputs.base("build/study"), "build/study")  # doctest: +SKIP
    >>> entry = study.measure("fp32", [], inputs.recipe.targets[0])  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeopt.core.errors import InputError
from edgeopt.core.files import atomic_file
from edgeopt.core.result import reporter

from .measure import BenchConfig, measure_entry, runtime_target
from .recipe import Recipe, Target, load_recipe
from .steps import Step, StepData, apply_step, make_step
from .task_types import sample


def slug(name: str) -> str:
    """``name`` as one file-name component (a variant's or target's folder)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


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
    if recipe.constant_inputs is not None:
        data["constant_inputs"] = recipe.constant_inputs
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def task_info(task) -> dict:
    """The report's ``task`` object."""
    return {"name": task.name, "metric": task.metric, "higher_is_better": task.higher_is_better,
            "labelled": task.labelled}


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


class OnnxModel:
    """A third-party ONNX model as a study's base: prepared (opset, constants, shapes) once.

    ``constants``: inputs held at one value (``{name: value}``, the recipe's ``constant_inputs``),
    made part of the graph; the study feeds the others (``inputs``)."""

    def __init__(self, spec: str, input_shape, constants: dict | None = None):
        from edgeopt.compile.onnx_prepare import freeze_inputs
        from edgeopt.compile.onnx_shapes import resolve_input_shapes
        from edgeopt.runtimes.artifact import model_input
        from edgeopt.runtimes.onnx_file import load_onnx, onnx_io

        self.path, self.history, _ = model_input(spec, "onnx", "run")
        graph = load_onnx(self.path)
        inputs, _ = onnx_io(graph)
        self.constants = dict(constants or {})
        try:  # checked now (names, values, shapes), applied when the base model is prepared
            freeze_inputs(graph, self.constants)
        except InputError as e:
            raise InputError(f"constant_inputs in the recipe: {e}") from None
        self.inputs = [s for s in inputs if s.name not in self.constants]
        # every variant, FLOP count and target (TVM builds too) takes the base model's shapes:
        # dynamic dims other than the batch need the recipe's input_shape, and the base gets them
        self.shapes = resolve_input_shapes(self.inputs, input_shape, option="input_shape in the recipe")
        self.given = input_shape is not None
        fed = {n: tuple(d if isinstance(d, int) else 1 for d in shape)  # a dynamic batch -> 1
               for n, shape in self.shapes.items()}
        # one input: its shape; several: {input name: shape}, and the task holds one array per input
        self.input_shape = fed[self.inputs[0].name] if len(self.inputs) == 1 else fed
        self.module = None

    def prepare(self, folder: Path, say: Callable[[str], None]):
        """The prepared model as an artifact folder (the fp32 variant and every step's input)."""
        import onnx

        from edgeopt.compile.onnx_prepare import prepare_onnx
        from edgeopt.runtimes.artifact import load_artifact, write_artifact
        from edgeopt.runtimes.onnx_file import onnx_io

        if (folder / "manifest.json").is_file():
            return load_artifact(folder)
        model = prepare_onnx(self.path, input_shapes=self.shapes if self.given else None,
                             constant_inputs=self.constants)
        inputs, outputs = onnx_io(model)
        record = {"name": "prepare", "config": {"source": str(self.path),
                                                **({"input_shape": self.shapes} if self.given else {}),
                                                **({"constant_inputs": self.constants} if self.constants else {})},
                  "metrics": {"opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))}}
        say(f"base model: {self.path} prepared (opset upgrade, constants folded, shapes inferred)")
        return write_artifact(folder, lambda d: onnx.save(model, str(d / "model.onnx")), format="onnx",
                              files=["model.onnx"], inputs=inputs, outputs=outputs,
                              history=[*self.history, record])


def base_model(module, task, recipe: Recipe, out: Path, progress=print):
    """The torch model every variant starts from: trained on the task (cached in
    ``out/base-model``), or as given for unlabelled tasks and for models that come with their
    weights (``weights:`` or ``.pt2``)."""
    import torch

    from edgeopt.runtimes.torch_runner import torch_outputs

    from .tasks import TrainConfig, train

    say = reporter(progress)
    if not task.labelled:
        return module.eval()
    if recipe.weights or str(recipe.model).endswith(".pt2"):
        say(f"base model: {recipe.model} as given ({recipe.weights or 'weights in the .pt2 file'}), not retrained")
        return module.eval()
    cache = Path(out) / "base-model" / "state_dict.pt"
    if cache.exists():
        # Our own file, and weights_only=True loads tensors, never arbitrary objects.
        module.load_state_dict(torch.load(cache, weights_only=True))
        say(f"base model: reused the weights trained in an earlier run ({cache})")
        return module.eval()
    say(f"base model: training {recipe.model} on {task.name}")
    trained = train(module, task, TrainConfig(**recipe.train))
    value = task.score(torch_outputs(trained, task.test.x)[0])
    say(f"base model: {task.metric} {value * 100:.2f}% on the test split" if task.metric == "top1"
        else f"base model: {task.metric} {value:.4g} on the test split")
    with atomic_file(cache) as tmp:
        torch.save(trained.state_dict(), tmp)
    return trained


@dataclass
class Base:
    """The model every variant starts from and its fp32 outputs on the task's test split.

    Attributes:
        model: a torch module, or the prepared ONNX artifact of an ONNX model.
        references: every output of ``model`` on the test inputs (one array per output).
        fp32_outputs: inputs -> ``model``'s first output (the evaluation's reference).
    """

    model: Any
    references: list
    fp32_outputs: Callable[[np.ndarray], np.ndarray]


@dataclass
class StudyInputs:
    """A recipe with its model and task loaded and checked against each other (``load_inputs``)."""

    recipe: Recipe
    bench: BenchConfig
    model: Any  # edgeopt.pipeline.models.LoadedModel, or OnnxModel
    task: Any
    onnx: bool

    def base(self, folder: str | os.PathLike, progress=print) -> Base:
        """The base model (trained on a labelled task and cached in ``folder/base-model``; an
        ONNX model prepared there) with its fp32 outputs on the test split."""
        from edgeopt.runtimes.torch_runner import torch_outputs

        from .measure import collect_outputs

        folder, x = Path(folder), self.task.test.x
        if self.onnx:
            from edgeopt.runtimes import load

            art = self.model.prepare(folder / "base-model", reporter(progress))
            references = collect_outputs(load(art, threads=1).run, x)
            return Base(art, references, lambda a: collect_outputs(load(art, threads=1).run, a)[0])
        module = base_model(self.model.module, self.task, self.recipe, folder, progress)
        return Base(module, torch_outputs(module, x), lambda a: torch_outputs(module, a)[0])


def load_inputs(recipe: str | os.PathLike | Recipe, *, nproc: int = 1, torch_model_for: str | None = None
                ) -> StudyInputs:
    """Read ``recipe`` (a file or a ``Recipe``), load its model and task, and check them.

    Every check that can fail before work is done is here, so a study writes nothing for a
    recipe it cannot run. ``nproc``: processes the distill steps will use (the training split
    must divide among them). ``torch_model_for``: the name of a command that needs a torch model
    (``search``), refused for an ONNX model before anything loads. Sets torch's thread count to
    the recipe's ``bench.threads``."""
    import torch

    from .models import load_model
    from .tasks import load_task

    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise InputError(f"nproc must be an integer >= 1, got {nproc!r}")
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    onnx_model = is_onnx_model(recipe.model)
    if onnx_model and torch_model_for:
        raise InputError(f"{recipe.source}: {torch_model_for} needs a torch model (pruning, low-rank and "
                         f"distillation work on modules); {recipe.model!r} is an ONNX model")
    bench = BenchConfig(**recipe.bench)
    torch.set_num_threads(bench.resolved_threads)
    if onnx_model:
        check_onnx_recipe(recipe)
        loaded = OnnxModel(recipe.model, recipe.input_shape, recipe.constant_inputs)
    else:
        loaded = load_model(recipe.model, seed=recipe.seed, weights=recipe.weights, input_shape=recipe.input_shape)
    several = isinstance(loaded.input_shape, dict)
    shape = dict(loaded.input_shape) if several else tuple(loaded.input_shape or ())
    if not shape:
        raise InputError(f"{recipe.source}: model {recipe.model!r} does not say its input shape; "
                         "add input_shape to the recipe")
    task = load_task(recipe.task, seed=recipe.seed, input_shape=shape, outputs=recipe.task_outputs)
    if several:
        _check_task_inputs(recipe, task, loaded.inputs, shape)
    elif isinstance(task.test.x, dict):
        raise InputError(f"{recipe.source}: task {recipe.task!r} gives inputs {sorted(task.test.x)}, "
                         f"and model {recipe.model!r} takes one input: give its inputs as one array")
    elif task.test.x.shape[1:] != shape[1:]:
        raise InputError(f"{recipe.source}: task {recipe.task!r} gives inputs of shape "
                         f"{task.test.x.shape[1:]}, the model takes {shape[1:]}")
    _check_steps(recipe, task, loaded, shape, onnx_model, nproc)
    return StudyInputs(recipe, bench, loaded, task, onnx_model)


def _check_task_inputs(recipe: Recipe, task, inputs, shapes: dict) -> None:
    """A task for a model with several inputs holds one array per input, named as it, of the
    input's (resolved) shape and dtype, one sample per row."""
    x = task.test.x
    names = [s.name for s in inputs]
    if not isinstance(x, dict):
        raise InputError(f"{recipe.source}: model {recipe.model!r} takes {len(names)} inputs {names}; task "
                         f"{recipe.task!r} gives one array: give one array per input, named as it")
    missing, unknown = [n for n in names if n not in x], sorted(set(x) - set(names))
    if missing or unknown:
        raise InputError(f"{recipe.source}: task {recipe.task!r} " + (f"has no input {missing[0]!r}" if missing else
                         f"gives input(s) {unknown} the model lacks") + f"; the model's inputs are {names}")
    for spec in inputs:
        given = x[spec.name]
        if given.shape[1:] != tuple(shapes[spec.name]) or given.dtype != np.dtype(spec.dtype):
            raise InputError(f"{recipe.source}: task {recipe.task!r} gives input {spec.name!r} as {given.dtype} "
                             f"samples of shape {given.shape[1:]}; the model takes {spec.dtype} of shape "
                             f"{tuple(shapes[spec.name])} (declared {tuple(spec.shape)})")


def _check_steps(recipe: Recipe, task, loaded, shape: tuple | dict, onnx_model: bool, nproc: int) -> None:
    """What the recipe's steps need of the model and the task, checked before any work."""
    from .output_check import TRAINING_STEPS, require_tensor_output

    for variant, steps in recipe.variants.items():
        for step in steps:
            if getattr(step.config, "max_accuracy_drop", None) is not None and not task.labelled:
                raise InputError(f"{recipe.source}: variant {variant!r}: max_accuracy_drop needs labels and "
                                 f"task {recipe.task!r} has none; use min_agreement")
    if not onnx_model:  # a list or dict output would fail in training, after out/ was made
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


class Study:
    """Builds variants (sharing step prefixes in memory) and measures them on targets.

    ``out``: where variants' artifacts go (``out/variants/<variant>/``). ``progress``: the
    study's lines (``None``, ``True`` or a callable, as everywhere); the steps run silent.
    ``evaluation``: an ``edgeopt.pipeline.evaluate.Evaluation`` that adds per-class accuracy,
    slices, calibration and robustness to each entry. ``cache``: a folder where torch-level step
    prefixes are kept on disk (keyed by the base model's weights and the steps' configs) and
    where a variant's finished ONNX artifact is reused, so another process (a resumed search)
    does not retrain; ``None`` keeps them in memory only (``edgeopt run``).
    ``latency(runner, artifact, target)``: returns a ``latency_ms`` report object in place of
    timing ``runner`` (``edgeopt.pipeline.search`` caches measurements with it)."""

    def __init__(self, inputs: StudyInputs, base: Base, out: str | os.PathLike, *, progress=print,
                 nproc: int = 1, evaluation=None, cache: Path | None = None, latency: Callable | None = None):
        self.recipe, self.task, self.bench = inputs.recipe, inputs.task, inputs.bench
        self.base = base.model
        self.example = sample(self.task.test.x, 0)
        self.references = base.references
        self.reference = base.references[0]
        self.evaluation, self.out, self.say = evaluation, Path(out), reporter(progress)
        self.data = StepData(example=self.example, task=self.task, teacher=self.base, nproc=nproc)
        self.models: dict = {(): self.base}  # step-prefix key -> module or the exception it raised
        self.onnx: dict = {}                  # variant name -> (module, artifact) or exception
        self.cache, self.latency = cache, latency
        self.applied: list = []               # (step name, config) of every torch-level step computed here
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
                self.say(f"step cache: {step.name} result not saved ({type(e).__name__}: {e})")
        return out

    def torch_model(self, steps: list[Step]):
        """The base model after the variant's torch-level steps (computed once per prefix)."""
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
        from edgeopt.core.result import StepResult

        if name not in self.onnx and self.cache is not None:
            kept = self._kept_artifact(name, steps)
            if kept is not None:
                self.onnx[name] = kept
        if name not in self.onnx:
            try:
                folder = self.out / "variants" / slug(name)
                if not hasattr(self.base, "state_dict"):  # an ONNX model: nothing to export
                    model = self.base
                    result = StepResult(self.base, (self.base.history or [{}])[-1], self.base.history[:-1])
                else:
                    model = self.torch_model(steps)
                    checks = [self.task.test.x[i:i + 1] for i in range(min(8, len(self.task.test.x)))]
                    result = apply_step(make_step("export"), model, self.data, out=folder / "onnx", check_inputs=checks)
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

        folder = self.out / "variants" / slug(name)
        final = [s.name for s in steps if s.kind.final]
        where = folder / (final[0] if final else "onnx")
        if not (where / "manifest.json").is_file() or not hasattr(self.base, "state_dict"):
            return None
        try:
            art = load_artifact(where)
        except Exception:
            return None  # damaged: built again
        return self.torch_model(steps), art

    def _fp32_onnx(self, folder: Path) -> Path:
        """The variant's float ONNX model (FLOPs are counted on it, not on the int8 graph)."""
        exported = folder / "onnx" / "model.onnx"
        return exported if exported.is_file() else self.base.model_file

    def _runner(self, name: str, steps: list[Step], target: Target, model, art):
        """(the artifact that runs on ``target``, its runner)."""
        from edgeopt.runtimes import load

        from .measure import save_torch_artifact

        folder = self.out / "variants" / slug(name)
        threads = self.bench.resolved_threads
        if target.runtime == "torch":
            import torch

            from edgeopt.runtimes.torch_runner import TorchRunner

            run_art = save_torch_artifact(model, self.example, folder / "torch", history=art.history)
            # Time the eager module itself; the .pt2 artifact is what gets shipped.
            return run_art, TorchRunner(model, example=[torch.from_numpy(self.example)], threads=threads)
        if target.runtime == "onnxruntime":
            return art, load(art, threads=threads)
        if target.runtime == "openvino":
            return art, load(art, runtime="openvino", threads=threads, precision=target.precision or "default")
        if target.runtime == "executorch":
            from edgeopt.compile.executorch_export import to_executorch

            # ExecuTorch's own int8: PT2E with XNNPACK's quantizer, calibrated on the task's
            # calibration split as many samples as the variant's quantize step would take
            quant = next((s.config for s in steps if s.name == "quantize"), None)
            calib = None
            if quant is not None:
                calib = self.task.calib.x[:quant.max_calibration_samples or len(self.task.calib.x)]
            run_art = to_executorch(model, self.example, folder / ("executorch-int8" if calib is not None else "executorch"),
                                    calibration=calib, history=art.history)
            return run_art, load(run_art, threads=threads)
        run_art = apply_step(Step("compile", target.build), art, self.data, out=folder / slug(target.label)).artifact
        return run_art, load(run_art, threads=threads)

    def measure(self, name: str, steps: list[Step], target: Target) -> dict:
        """Build variant ``name`` (its ``steps``) for ``target`` and return its report entry."""
        model, art = self.onnx_artifact(name, steps)
        run_art, runner = self._runner(name, steps, target, model, art)
        latency = dict(self.latency(runner, art, target)) if self.latency is not None else None
        where = runtime_target(target.runtime, target.build)
        if target.runtime == "openvino":  # the precision the plugin chose (bf16 by itself on some CPUs)
            where = f"{where}/{runner.chosen_precision}"
        elif getattr(target.build, "precision", None) == "auto":  # the precision the build chose
            compiled = next((h for h in reversed(run_art.history) if h.get("name") == "compile"), {})
            where = f"{where}/{compiled.get('metrics', {}).get('precision', 'fp32')}"
        entry = measure_entry(
            name=name, steps=steps, runtime=target.runtime,
            target=where, runner=runner, run_artifact=run_art,
            model=model, fp32_onnx=self._fp32_onnx(self.out / "variants" / slug(name)), task=self.task,
            reference=self.reference, example=self.example, bench=self.bench, evaluation=self.evaluation,
            references=self.references, latency=latency)
        if target.runtime == "openvino":
            entry["runtime_version"] = runner.version
        elif target.runtime == "executorch":
            entry["runtime_version"] = run_art.manifest["runtime_version"].split()[-1]
        return entry
