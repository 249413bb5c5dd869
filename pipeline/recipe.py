"""Recipes: a whole trade-off study in one YAML file, validated up front.

```yaml
model: zoo:digits_cnn          # or module.path:factory, or a .pt2 file
task: digits                   # built-in task
input_shape: [1, 1, 32, 32]    # optional for zoo models
variants:
  fp32: []
  lowrank+kd: [{lowrank: {energy: 0.97, energy_on: responses}}, {distill: {epochs: 5}}]
  int8: [{quantize: {method: entropy, per_channel: true}}]
targets: [{runtime: torch}, {runtime: onnxruntime}, {runtime: tvm, target: cpu, tune_trials: 256}]
bench: {warmup: 10, repeat: 100, threads: 2}
```

Steps and their parameters come from the step registry (``edgeopt.pipeline.steps``): a step's
parameters are its config's fields, the same names as ``edgeopt compress STEP --help`` shows
(with ``-`` for ``_``). Each step's config is built when the recipe is read, so a bad value fails
before any work. Steps run in order: torch-level steps (``lowrank``, ``prune``, ``distill``) first,
then at most one ONNX-level step (``quantize``), last. Unknown keys, wrong types and unknown steps
are errors that name the key and its line; TVM targets are checked up front too. Every key is
listed in ``docs/recipes.md``.

Example:
    >>> from edgeopt.pipeline.recipe import parse_recipe
    >>> r = parse_recipe("model: zoo:digits_cnn\\ntask: digits\\nvariants: {fp32: []}\\n"
    ...                  "targets: [{runtime: onnxruntime}]\\n")
    >>> r.variants["fp32"], r.targets[0].runtime
    ([], 'onnxruntime')
    >>> parse_recipe("model: zoo:digits_cnn\\ntask: digits\\nvariants: {p: [{prune: {amount: 0.5}}]}\\n"
    ...              "targets: [{runtime: onnxruntime}]\\n").variants["p"][0].config.amount
    0.5
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from edgeopt.core.errors import InputError

from .search_space import SearchSpace
from .steps import STEPS, Step, check_order, make_step

VARIANT_STEPS = tuple(name for name, kind in STEPS.items() if kind.in_variants)

TOP_KEYS = ("model", "weights", "task", "input_shape", "constant_inputs", "variants", "targets", "bench",
            "seed", "train", "evaluate", "search")
#: Keys of a target entry per runtime; a tvm target takes the compile step's config fields as well
#: (``target_keys``).
TARGET_KEYS = {"torch": ("runtime",), "onnxruntime": ("runtime",), "openvino": ("runtime", "precision"),
               "executorch": ("runtime",), "tvm": ("runtime",)}
BENCH_KEYS = ("warmup", "repeat", "threads")
#: Keys of the ``evaluate`` section (``edgeopt.pipeline.evaluate.EvaluateConfig``) and their types.
EVALUATE_KEYS = {"enabled": (bool,), "robustness": (bool,), "samples": (int,), "exemplars": (bool,),
                 "thumbnails": (int,), "seed": (int,)}


@dataclass(frozen=True)
class Target:
    """Where a variant runs: a runtime, and for tvm the build config (target, int8, tuning)."""

    runtime: str
    target: str | dict | None = None
    build: object = None  # edgeopt.compile.BuildConfig, for runtime tvm
    precision: str | None = None  # openvino's inference precision (None: the plugin's choice)

    @property
    def label(self) -> str:
        """``onnxruntime``, ``torch``, or ``tvm-<target>[-<kernels>][-fp16|-bf16][-nograph]``: the second
        half of a row's key and the name of its artifact folder; build options that change the
        artifact are part of it, so two targets never share a build."""
        if self.runtime == "openvino" and self.precision not in (None, "default"):
            return f"openvino-{self.precision}"
        if self.runtime != "tvm":
            return self.runtime
        label = f"tvm-{self.target_name}"
        b = self.build
        if b is not None:
            label += f"-{b.kernels}" if getattr(b, "kernels", "auto") != "auto" else ""
            label += f"-{b.precision}" if getattr(b, "precision", "fp32") != "fp32" else ""
            label += "-nograph" if getattr(b, "cuda_graph", True) is False else ""
            label += "-exactmath" if getattr(b, "fast_math", True) is False else ""
        return label

    @property
    def target_name(self) -> str:
        if self.target is None:
            return "cpu"
        return self.target if isinstance(self.target, str) else self.target.get("kind", "custom")


@dataclass(frozen=True)
class Recipe:
    model: str
    task: str
    variants: dict            # name -> list[Step]
    targets: list
    input_shape: tuple | dict | None = None   # dict: {ONNX input name: shape}
    bench: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    seed: int = 0
    source: str = "<recipe>"
    weights: str | None = None
    evaluate: dict = field(default_factory=dict)
    search: dict = field(default_factory=dict)  # the `search` section (edgeopt.pipeline.search_space.SearchSpace)
    task_outputs: list | None = None  # `task: {source, outputs}`: what the model's outputs are
    constant_inputs: dict | None = None  # ONNX inputs held at one value: {name: number or nested list}


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and validate a recipe file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"recipe {str(p)!r} does not exist")
    return parse_recipe(p.read_text(), str(p))


def parse_recipe(text: str, source: str = "<recipe>") -> Recipe:
    """Validate recipe YAML text; ``InputError`` names the key and line of the first problem."""
    import yaml

    try:
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise InputError(f"{source}{where}: not valid YAML: {getattr(e, 'problem', e)}") from None

    def err(node, msg: str) -> InputError:
        return InputError(f"{source} line {node.start_mark.line + 1}: {msg}")

    def mapping(node, what: str) -> list:
        if not isinstance(node, yaml.MappingNode):
            raise err(node, f"{what} must be a mapping, got {_kind(node)}")
        keys = [k.value for k, _ in node.value]
        dup = {k for k in keys if keys.count(k) > 1}
        if dup:
            raise err(node, f"{what} repeats key(s) {sorted(dup)}")
        return node.value

    def scalar(node, what: str, types: tuple):
        names = " or ".join({int: "an integer", float: "a number", str: "a string", bool: "true or false"}[t]
                            for t in types)
        if not isinstance(node, yaml.ScalarNode):
            raise err(node, f"{what} must be {names}, got {_kind(node)}")
        value = yaml.safe_load(yaml.serialize(node))
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise err(node, f"{what} must be {names}, got {value!r}")
        return value

    if root is None:
        raise InputError(f"{source}: the recipe is empty; expected keys {', '.join(TOP_KEYS)}")
    top = {}
    for k, v in mapping(root, "the recipe"):
        if k.value not in TOP_KEYS:
            raise err(k, f"unknown key {k.value!r}; expected one of {', '.join(TOP_KEYS)}")
        top[k.value] = (k, v)
    for required in ("model", "task", "variants", "targets"):
        if required not in top:
            raise err(root, f"missing key {required!r}")

    model = scalar(top["model"][1], "'model'", (str,))
    weights = None
    if "weights" in top:
        weights = scalar(top["weights"][1], "'weights'", (str,))
        if not Path(weights).is_file():
            raise err(top["weights"][1], f"weights file {weights!r} does not exist; expected a state dict "
                      "saved with torch.save(model.state_dict(), path)")
    task_node, task_outputs = top["task"][1], None
    if isinstance(task_node, yaml.MappingNode):  # {source: ..., outputs: [...]}
        parts = {k.value: (k, v) for k, v in mapping(task_node, "'task'")}
        unknown = sorted(set(parts) - {"source", "outputs"})
        if unknown or "source" not in parts:
            raise err(task_node, f"'task' as a mapping takes keys source (the task) and outputs (what the "
                      f"model's outputs are); {f'unknown key(s) {unknown}' if unknown else 'source is missing'}")
        task_node = parts["source"][1]
        if "outputs" in parts:
            from .output_quality import parse_outputs

            node = parts["outputs"][1]
            task_outputs = yaml.safe_load(yaml.serialize(node))
            try:
                parse_outputs(task_outputs, "task")
            except InputError as e:
                raise err(node, str(e)) from None
    task = scalar(task_node, "'task'", (str,))
    from .tasks import check_task_spec

    try:
        check_task_spec(task)
    except (InputError, FileNotFoundError) as e:
        raise err(task_node, str(e)) from None
    input_shape = None
    if "input_shape" in top:
        node = top["input_shape"][1]

        def dims(n, what):
            if not isinstance(n, yaml.SequenceNode) or not n.value:
                raise err(n, f"{what} must be a list of positive integers, e.g. [1, 1, 32, 32]")
            shape = tuple(scalar(d, "an input_shape entry", (int,)) for d in n.value)
            if any(d < 1 for d in shape):
                raise err(n, f"{what} must be positive, got {list(shape)}")
            return shape

        if isinstance(node, yaml.MappingNode):  # one shape per input of an ONNX model, by name
            if not (model.endswith(".onnx") or Path(model).is_dir()):
                raise err(node, "'input_shape' by input name is for ONNX models; a torch model "
                          "takes one list, e.g. [1, 1, 32, 32]")
            input_shape = {scalar(k, "an input name", (str,)): dims(v, f"'input_shape.{k.value}'")
                           for k, v in mapping(node, "'input_shape'")}
        else:
            input_shape = dims(node, "'input_shape'")
    constant_inputs = None
    if "constant_inputs" in top:
        node = top["constant_inputs"][1]
        if not (model.endswith(".onnx") or Path(model).is_dir()):
            raise err(node, "'constant_inputs' is for ONNX models (inputs of the graph held at one value)")
        constant_inputs = {}
        for k, v in mapping(node, "'constant_inputs'"):
            value = yaml.safe_load(yaml.serialize(v))
            flat = value if isinstance(value, list) else [value]
            while any(isinstance(i, list) for i in flat):
                flat = [j for i in flat for j in (i if isinstance(i, list) else [i])]
            if not flat or not all(isinstance(i, (int, float)) and not isinstance(i, bool) for i in flat):
                raise err(v, f"'constant_inputs.{k.value}' must be a number or a list of numbers, got {value!r}")
            constant_inputs[scalar(k, "an input name", (str,))] = value
        if isinstance(input_shape, dict) and set(input_shape) & set(constant_inputs):
            raise err(node, f"input {sorted(set(input_shape) & set(constant_inputs))[0]!r} is in both "
                      "'input_shape' and 'constant_inputs'; a constant input takes its value's shape")
    seed = scalar(top["seed"][1], "'seed'", (int,)) if "seed" in top else 0

    bench = {}
    if "bench" in top:
        for k, v in mapping(top["bench"][1], "'bench'"):
            if k.value not in BENCH_KEYS:
                raise err(k, f"unknown key {k.value!r} in 'bench'; expected one of {', '.join(BENCH_KEYS)}")
            bench[k.value] = scalar(v, f"'bench.{k.value}'", (int,))
    train = {}
    if "train" in top:
        from .tasks import TrainConfig

        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        for k, v in mapping(top["train"][1], "'train'"):
            if k.value not in fields:
                raise err(k, f"unknown key {k.value!r} in 'train'; expected one of {', '.join(sorted(fields))}")
            train[k.value] = scalar(v, f"'train.{k.value}'", (int, float))
        _check_config(TrainConfig, train, top["train"][1], err)

    evaluate = {}
    if "evaluate" in top:
        from .evaluate import EvaluateConfig

        for k, v in mapping(top["evaluate"][1], "'evaluate'"):
            if k.value not in EVALUATE_KEYS:
                raise err(k, f"unknown key {k.value!r} in 'evaluate'; expected one of {', '.join(EVALUATE_KEYS)}")
            evaluate[k.value] = scalar(v, f"'evaluate.{k.value}'", EVALUATE_KEYS[k.value])
        _check_config(EvaluateConfig, evaluate, top["evaluate"][1], err, "'evaluate'")

    search = {}
    if "search" in top:
        snode = top["search"][1]
        for k, v in mapping(snode, "'search'"):
            search[k.value] = yaml.safe_load(yaml.serialize(v))
        try:
            SearchSpace.from_dict(search)
        except InputError as e:
            raise err(snode, f"'search': {e}") from None

    variants = {}
    vnode = top["variants"][1]
    for k, v in mapping(vnode, "'variants'"):
        name = k.value
        if not isinstance(v, yaml.SequenceNode):
            raise err(v, f"variant {name!r} must be a list of steps (use [] for the plain model)")
        variants[name] = [_step(s, name, err, mapping) for s in v.value]
        try:
            check_order(variants[name])
        except InputError as e:
            raise err(v, f"variant {name!r}: {e}") from None
        for step in variants[name]:
            if getattr(step.config, "max_accuracy_drop", None) is not None and task == "random":
                raise err(v, f"variant {name!r}: max_accuracy_drop needs labels, and task 'random' has "
                          "none; use min_agreement")
    if not variants:
        raise err(vnode, "'variants' is empty; expected at least one, e.g. fp32: []")

    tnode = top["targets"][1]
    if not isinstance(tnode, yaml.SequenceNode) or not tnode.value:
        raise err(tnode, "'targets' must be a non-empty list, e.g. [{runtime: onnxruntime}]")
    targets = []
    for t in tnode.value:
        entries = {k.value: (k, v) for k, v in mapping(t, "a target")}
        if "runtime" not in entries:
            raise err(t, "a target needs 'runtime' (torch, onnxruntime, openvino, executorch or tvm)")
        runtime = scalar(entries["runtime"][1], "'runtime'", (str,))
        if runtime not in TARGET_KEYS:
            raise err(entries["runtime"][1], f"unknown runtime {runtime!r}; expected one of "
                      f"{', '.join(TARGET_KEYS)}")
        for key, (knode, _) in entries.items():
            if key not in target_keys(runtime):
                raise err(knode, f"unknown key {key!r} for runtime {runtime!r}; expected "
                          f"{', '.join(target_keys(runtime))}")
        target = None
        if "target" in entries:
            tv = entries["target"][1]
            target = yaml.safe_load(yaml.serialize(tv))
            if not isinstance(target, (str, dict)):
                raise err(tv, f"'target' must be a preset name or a mapping, got {target!r}")
        build = None
        if runtime == "tvm":
            build = _build_config(entries, err)
        precision = None
        if runtime in ("openvino", "executorch"):
            import importlib.util

            if importlib.util.find_spec(runtime) is None:  # said before any work is done
                raise err(entries["runtime"][1], f"runtime {runtime!r} needs the {runtime} package, which is "
                          f"not installed: pip install -e .[{runtime}]")
        if runtime == "openvino" and "precision" in entries:
            from edgeopt.runtimes.openvino_runner import PRECISIONS

            pnode = entries["precision"][1]
            precision = scalar(pnode, "'precision'", (str,))
            if precision not in PRECISIONS:
                raise err(pnode, f"openvino precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        made = Target(runtime, target, build, precision)
        same = [i for i, other in enumerate(targets) if other.label == made.label]
        if same:
            raise err(t, f"targets {same[0] + 1} and {len(targets) + 1} are both {made.label!r}: give them "
                      "different target, kernels or precision settings, or drop one")
        targets.append(made)
    return Recipe(model=model, task=task, task_outputs=task_outputs, variants=variants, targets=targets, input_shape=input_shape,
                  bench=bench, train=train, seed=seed, source=source, weights=weights, evaluate=evaluate,
                  search=search, constant_inputs=constant_inputs)


def _kind(node) -> str:
    import yaml

    return {yaml.MappingNode: "a mapping", yaml.SequenceNode: "a list"}.get(type(node), repr(node.value))


def _step(node, variant: str, err, mapping) -> Step:
    import yaml

    if isinstance(node, yaml.ScalarNode) and node.value in STEPS:
        name, params_node = node.value, None
    else:
        items = mapping(node, f"a step of variant {variant!r}")
        if len(items) != 1:
            raise err(node, f"a step is a mapping with one key (the step name), got {[k.value for k, _ in items]}")
        (knode, params_node), = items
        name = knode.value
        if name not in STEPS:
            raise err(knode, f"unknown step {name!r} in variant {variant!r}; expected one of {', '.join(VARIANT_STEPS)}")
    if not STEPS[name].in_variants:
        raise err(node, f"step {name!r} is not listed in a variant: every variant is exported, and a "
                  "tvm target compiles it (its keys are the compile options); expected one of "
                  f"{', '.join(VARIANT_STEPS)}")
    params = {}
    if params_node is not None and not (isinstance(params_node, yaml.ScalarNode) and params_node.value in ("", "~", "null")):
        for k, v in mapping(params_node, f"the parameters of step {name!r}"):
            value = yaml.safe_load(yaml.serialize(v))
            params[k.value] = tuple(value) if isinstance(value, list) else value
    try:
        return make_step(name, params, node.start_mark.line + 1)
    except InputError as e:
        raise err(node, f"step {name!r} of variant {variant!r}: {e}") from None


def target_keys(runtime: str) -> tuple[str, ...]:
    """The keys a target entry of ``runtime`` takes. A tvm target's are ``runtime`` and the
    compile step's config fields as ``flat_fields`` spells them (``tune_trials`` for
    ``BuildConfig.tune.trials``), less ``input_shape``: the recipe's own serves every target.

    Example:
        >>> target_keys("tvm")[:4]
        ('runtime', 'target', 'int8', 'tune_trials')
    """
    if runtime != "tvm":
        return TARGET_KEYS[runtime]
    from edgeopt.core.config import flat_fields

    return TARGET_KEYS["tvm"] + tuple(n for n, _ in flat_fields(STEPS["compile"].config) if n != "input_shape")


def _build_config(entries: dict, err):
    """The tvm target's BuildConfig through the registry (so a bad value fails now, naming its key)."""
    import yaml

    params = {key: yaml.safe_load(yaml.serialize(v)) for key, (_, v) in entries.items() if key != "runtime"}
    try:
        return make_step("compile", params).config
    except (InputError, FileNotFoundError) as e:
        named = str(e).split(" ", 1)[0]
        where = entries.get(named, entries.get("target", entries["runtime"]))[1]
        raise err(where, str(e)) from None


def _check_config(cls, params: dict, node, err, what: str = "") -> None:
    """Build a config once now (the ``train`` section), so bad values fail before any work."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise err(node, f"{what}: unknown parameter(s) {unknown}; expected some of {', '.join(sorted(fields))}")
    try:
        cls(**params)
    except (ValueError, TypeError) as e:
        raise err(node, f"{what}: {e}") from None
