"""User tasks: ``module.path:factory`` plug-ins, ``.npz`` files and image folders.

``edgeopt.pipeline.tasks.load_task`` dispatches here; this module holds the contracts.

**Factory contract.** ``module.path:factory`` names a callable (function or class) that needs
no arguments. It may declare any of the keywords ``seed``, ``input_shape``, ``data_dir`` and
``limit`` (or ``**kwargs``); those it declares are passed. It returns a ``TaskData`` (or a dict
with the same keys)::

    TaskData(train=..., calib=..., test=..., val=None, metric=None, num_classes=None,
             name=None, model="", classes=(), groups=None, outputs=())

Each split is one of: a ``Split``; an array or tensor of inputs (unlabelled); a *tuple*
``(x, y)`` of arrays or tensors (``y`` may be None); a ``torch.utils.data.Dataset`` whose items
are samples ``(x_i, y_i)`` or ``x_i``; or any other iterable (a ``DataLoader``, a list, a
generator) of batches ``(x, y)`` or ``x``. Everything is materialised once into float32 inputs;
for a model with several inputs, ``x`` is a dict of arrays keyed by input name, each
``(N, *the input's whole shape)`` in that input's dtype (kept as given).
``val`` defaults to 10% of ``train`` (seeded, taken out of it). ``metric`` defaults to ``top1``
for integer class labels (N,), ``mse`` for float targets and ``agreement`` without targets;
``num_classes`` to the largest label + 1. Inputs are one sample per row, without the batch-1
axis of the model's input shape: ``x.shape[1:] == input_shape[1:]``.

``groups`` (optional) is one value per *test* sample (integers or strings: a site, a device, a
skin tone, an age band): the report gives accuracy per group next to fp32's for every variant
(``edgeopt.pipeline.evaluate``), so a compressed model that fails one group shows it.

``outputs`` (optional) says what the model's outputs are, one mapping per output in order, e.g.
``[{"name": "det", "kind": "boxes+scores", "classes": 80}]`` or ``[{"kind": "sequence", "decode":
"ctc"}]``: each output is compared with fp32's by its kind (``edgeopt.pipeline.output_quality``).
A ``.npz`` task declares them as a JSON string array ``outputs``. A ``.npz`` task for a model with
several inputs holds one array per input, named as it, in place of ``x``.

Example:
    >>> import numpy as np
    >>> from edgeopt.pipeline.task_sources import TaskData, task_from_data
    >>> rng = np.random.default_rng(0)
    >>> data = TaskData(train=(rng.standard_normal((40, 3), dtype=np.float32), rng.integers(0, 2, 40)),
    ...                 calib=rng.standard_normal((8, 3), dtype=np.float32),
    ...                 test=(rng.standard_normal((10, 3), dtype=np.float32), rng.integers(0, 2, 10)))
    >>> task = task_from_data(data, "toy")
    >>> task.metric, task.num_classes, len(task.train), len(task.val), task.input_shape
    ('top1', 2, 36, 4, (1, 3))
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.core.errors import InputError, first_line
from edgeopt.core.factory import resolve_factory

from .task_types import METRICS, Split, Task, count, sample_shape, take

# Keywords a task factory may declare; load_task passes those it declares.
FACTORY_KEYWORDS = ("seed", "input_shape", "data_dir", "limit")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
PREPROCESS_FILE = "preprocess.yaml"
# the arrays of a .npz task that are not model inputs
NPZ_KEYS = ("y", "metric", "outputs")


@dataclass
class TaskData:
    """What a task factory returns (see the module docstring for the accepted split forms)."""

    train: Any
    calib: Any
    test: Any
    val: Any = None
    metric: str | None = None
    num_classes: int | None = None
    name: str | None = None
    model: str = ""
    classes: tuple = ()
    groups: Any = None  # one value per test sample: the task's own slices in the report
    outputs: Any = ()  # what each model output is: [{name, kind, ...}] (edgeopt.pipeline.output_quality)


def spec_kind(spec: str) -> str:
    """``npz``, ``folder``, ``factory`` or ``builtin``; ``InputError`` for a missing path or a
    file of another type."""
    if spec.endswith(".npz"):
        return "npz"
    path = Path(spec)
    if path.is_dir():
        return "folder"
    if path.exists():
        raise InputError(f"task {spec!r}: unknown data file type; expected a .npz file or an image folder")
    looks_like_path = os.sep in spec or spec.startswith(".") or (os.altsep and os.altsep in spec)
    if looks_like_path:
        raise InputError(f"task data {spec!r} does not exist; expected a .npz file or an image folder")
    if ":" in spec:
        return "factory"
    return "builtin"


# -- factories ------------------------------------------------------------------------------

def load_factory(spec: str, **available):
    """Call the factory of ``spec`` with the keywords it declares; its result as a ``Task``."""

    factory, keywords = resolve_factory(spec, "task factory", "TaskData", FACTORY_KEYWORDS)
    try:
        result = factory(**{k: available.get(k) for k in keywords})
    except Exception as e:  # the factory is user code: report it in one line, no traceback
        raise InputError(f"task factory {spec!r} raised {type(e).__name__}: {first_line(e)}") from None
    if isinstance(result, Task):
        return result
    if isinstance(result, dict):
        data = dict(result)
        fields = [f.name for f in dataclasses.fields(TaskData)]
        unknown = sorted(set(data) - set(fields))
        missing = [k for k in ("train", "calib", "test") if k not in data]
        if unknown or missing:
            what = f"unknown key(s) {unknown}" if unknown else f"missing key(s) {missing}"
            raise InputError(f"task factory {spec!r} returned a dict with {what}; expected keys "
                             f"train, calib, test and optionally {', '.join(fields[3:])}")
        result = TaskData(**data)
    if not isinstance(result, TaskData):
        raise InputError(f"task factory {spec!r} returned {type(result).__name__}; expected "
                         "TaskData or a dict with train, calib and test")
    return task_from_data(result, spec, seed=available.get("seed") or 0, where=f"task factory {spec!r}")


def task_from_data(data: TaskData, default_name: str, seed: int = 0, where: str | None = None):
    """A ``Task`` from ``TaskData``: splits materialised and checked, defaults filled in."""
    from .output_quality import parse_outputs

    where = where or f"task {default_name!r}"
    splits = {}
    for name in ("train", "calib", "test", "val"):
        value = getattr(data, name)
        if value is None:
            if name != "val":
                raise InputError(f"{where}: the {name} split is missing")
            continue
        splits[name] = to_split(value, f"{where}: {name} split")
    if "val" not in splits:
        splits["train"], splits["val"] = _carve(splits["train"], max(1, len(splits["train"]) // 10),
                                                seed, f"{where}: train split")
    y = splits["test"].y
    metric = data.metric or ("agreement" if y is None else "top1" if _is_labels(y) else "mse")
    if metric not in METRICS:
        raise InputError(f"{where}: unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    if metric == "agreement":  # compared with the reference model only: targets are not used
        splits = {k: Split(v.x, None) for k, v in splits.items()}
    shapes = {s: sample_shape(v.x) for s, v in splits.items()}
    if len({repr(v) for v in shapes.values()}) > 1:
        raise InputError(f"{where}: splits have different input shapes {shapes}")
    num_classes = 0
    for name, s in list(splits.items()):
        if s.y is None:
            continue
        if metric == "top1":
            if not _is_labels(s.y):
                raise InputError(f"{where}: metric top1 needs integer class labels of shape (N,); "
                                 f"the {name} split has {s.y.dtype} targets of shape {s.y.shape}")
            splits[name] = Split(s.x, s.y.astype(np.int64))
            num_classes = max(num_classes, int(s.y.max()) + 1)
        else:
            splits[name] = Split(s.x, s.y.astype(np.float32))
    if metric == "top1" and data.num_classes is not None:
        if data.num_classes < num_classes:
            raise InputError(f"{where}: num_classes is {data.num_classes} but a label is {num_classes - 1}")
        num_classes = data.num_classes
    groups = None
    if data.groups is not None:
        groups = _numpy(data.groups, f"{where}: groups") if not isinstance(data.groups, (list, tuple)) \
            else np.asarray(data.groups)
        if groups.ndim != 1 or len(groups) != len(splits["test"]):
            raise InputError(f"{where}: groups must hold one value per test sample ({len(splits['test'])}), "
                             f"got shape {groups.shape}")
        if not (np.issubdtype(groups.dtype, np.integer) or groups.dtype.kind in "UOb"):
            raise InputError(f"{where}: groups must be integers or strings, got {groups.dtype}")
        groups = groups.astype(str) if groups.dtype.kind == "O" else groups
    # several inputs: each array's rows are the input's whole shape; one input: rows lack the batch-1 axis
    test_shape = shapes["test"]
    input_shape = test_shape if isinstance(test_shape, dict) else (1, *test_shape)
    return Task(data.name or default_name, metric, input_shape, num_classes,
                splits["train"], splits["val"], splits["calib"], splits["test"], model=data.model or "",
                classes=tuple(data.classes), test_groups=groups, outputs=parse_outputs(data.outputs or None, where))


def to_split(value, what: str):
    """A ``Split`` from any accepted split form (see the module docstring)."""

    if isinstance(value, Split):
        x, y = value.x, value.y
    elif isinstance(value, dict):
        x, y = value, None
    elif _is_array(value):
        x, y = value, None
    elif isinstance(value, tuple):
        if len(value) != 2 or not (_is_array(value[0]) or isinstance(value[0], dict)) \
                or not (value[1] is None or _is_array(value[1])):
            raise InputError(f"{what}: a tuple must be (x, y) of arrays or tensors")
        x, y = value
    else:
        x, y = _materialise(value, what)
    y = None if y is None else _numpy(y, what)
    if isinstance(x, dict):
        x = _per_input(x, what)
        if y is not None and len(y) != count(x):
            raise InputError(f"{what}: {count(x)} inputs but {len(y)} targets")
        return Split(x, y)
    x = _numpy(x, what)
    if x.ndim < 2 or len(x) == 0:
        raise InputError(f"{what} is empty or has no sample axis: inputs of shape {x.shape}; "
                         "expected (N, ...) with N >= 1")
    if not np.issubdtype(x.dtype, np.number) and x.dtype != np.bool_:
        raise InputError(f"{what}: inputs must be numeric, got {x.dtype}")
    if y is not None and len(y) != len(x):
        raise InputError(f"{what}: {len(x)} inputs but {len(y)} targets")
    return Split(np.ascontiguousarray(x, dtype=np.float32), y)


def _per_input(x: dict, what: str) -> dict:
    """Per-input arrays (a model with several inputs): numeric, each in its own dtype (the model
    checks it: an int64 sample rate stays int64), as many rows in each."""
    if not x:
        raise InputError(f"{what}: no input arrays; expected one array per model input, keyed by its name")
    out = {}
    for name, v in x.items():
        a = _numpy(v, f"{what}, input {name!r}")
        if a.ndim < 1 or len(a) == 0:
            raise InputError(f"{what}: input {name!r} is empty or has no sample axis (shape {a.shape}); "
                             "expected (N, *the input's shape) with N >= 1")
        if not np.issubdtype(a.dtype, np.number) and a.dtype != np.bool_:
            raise InputError(f"{what}: input {name!r} must be numeric, got {a.dtype}")
        out[str(name)] = np.ascontiguousarray(a)
    rows = {k: len(v) for k, v in out.items()}
    if len(set(rows.values())) > 1:
        raise InputError(f"{what}: the input arrays hold different numbers of samples: "
                         + ", ".join(f"{k} {n}" for k, n in rows.items()))
    return out


def _materialise(value, what: str):
    """Stack a torch Dataset's samples, or concatenate an iterable's batches."""
    try:
        import torch

        is_dataset = isinstance(value, torch.utils.data.Dataset)
    except ImportError:
        is_dataset = False
    if is_dataset:
        try:
            items = [value[i] for i in range(len(value))]
        except Exception as e:
            raise InputError(f"{what}: reading the dataset raised {type(e).__name__}: {first_line(e)}") from None
        xs, ys = _unzip(items, what)
        return np.stack([_numpy(v, what) for v in xs]), None if ys is None else np.stack(
            [_numpy(v, what) for v in ys])
    if not hasattr(value, "__iter__") or isinstance(value, (str, bytes, dict)):
        raise InputError(f"{what}: got {type(value).__name__}; expected an array, (x, y), a torch "
                         "Dataset or an iterable of batches")
    try:
        batches = list(value)
    except Exception as e:
        raise InputError(f"{what}: iterating it raised {type(e).__name__}: {first_line(e)}") from None
    if not batches:
        raise InputError(f"{what} is empty; expected at least one batch")
    xs, ys = _unzip(batches, what)
    x = np.concatenate([_numpy(v, what) for v in xs])
    y = None if ys is None else np.concatenate([_numpy(v, what) for v in ys])
    return x, y


def _unzip(items: list, what: str):
    paired = [isinstance(i, (tuple, list)) and len(i) == 2 for i in items]
    if all(paired):
        return [i[0] for i in items], [i[1] for i in items]
    if any(paired) or not all(_is_array(i) for i in items):
        raise InputError(f"{what}: every item must be inputs or an (inputs, targets) pair")
    return items, None


def _is_array(v) -> bool:
    return isinstance(v, np.ndarray) or type(v).__module__.startswith("torch") and hasattr(v, "numpy")


def _numpy(v, what: str) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    try:
        return np.asarray(v)
    except (TypeError, ValueError) as e:
        raise InputError(f"{what}: not an array: {e}") from None


def _is_labels(y: np.ndarray) -> bool:
    if y.ndim != 1:
        return False
    if np.issubdtype(y.dtype, np.integer):
        return bool(y.min() >= 0)
    return False


def _carve(split, n: int, seed: int, what: str):
    """(rest, n seeded samples) out of ``split``."""

    if len(split) <= n:
        raise InputError(f"{what} has {len(split)} samples; at least {n + 1} are needed to carve "
                         f"out {n} (or give the missing split explicitly)")
    order = np.random.default_rng(seed).permutation(len(split))
    take, keep = np.sort(order[:n]), np.sort(order[n:])

    def sub(i):
        return Split(split.x[i], None if split.y is None else split.y[i])

    return sub(keep), sub(take)


def split_arrays(x: np.ndarray | dict, y: np.ndarray | None, seed: int, what: str) -> dict:
    """Seeded train / val / calib / test index arrays: 20% test, 10% val, 10% (at most 256)
    calibration, the rest train; stratified by class when every class has 10 samples.
    ``x``: the inputs (an array, or per-input arrays), only counted."""
    n = count(x)
    if n < 4:
        raise InputError(f"{what} has {n} samples; at least 4 are needed (one per split)")
    sizes = {"test": max(1, round(0.2 * n)), "val": max(1, round(0.1 * n)),
             "calib": max(1, min(256, round(0.1 * n)))}
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    counts = np.bincount(y)[np.bincount(y) > 0] if y is not None and _is_labels(y) else None
    if counts is not None and counts.min() >= 10:
        # Stratified: give each sample its (jittered) rank within its class, as a fraction, and
        # order by it, so that every prefix of the order holds the classes in proportion.
        rank = np.empty(n)
        for c in np.unique(y):
            members = order[y[order] == c]
            rank[members] = (np.arange(len(members)) + rng.random()) / len(members)
        order = np.argsort(rank, kind="stable")
    out, start = {}, 0
    for name in ("test", "val", "calib"):
        out[name] = np.sort(order[start:start + sizes[name]])
        start += sizes[name]
    out["train"] = np.sort(order[start:])
    if len(out["train"]) == 0:
        raise InputError(f"{what} has {n} samples; too few to leave any for training")
    return out


# -- .npz files -------------------------------------------------------------------------------

def check_npz(spec: str) -> None:
    """``InputError`` unless ``spec`` is a readable ``.npz`` with an ``x`` array, or arrays named
    as a model's inputs (matched against the model when it loads), and, when it has one, a valid
    ``outputs`` declaration."""
    with _open_npz(spec) as data:
        if "x" in data.files or not [f for f in data.files if f not in NPZ_KEYS]:
            _npz_inputs(data, spec, None)
        if "outputs" in data.files:
            npz_outputs(data, spec)


def npz_outputs(data, spec: str):
    """A ``.npz`` task's ``outputs``: a JSON string with one mapping per model output."""
    import json

    from .output_quality import parse_outputs

    where = f"task data {spec!r}"
    try:
        text = str(data["outputs"])
        value = json.loads(text)
    except (ValueError, TypeError) as e:
        raise InputError(f"{where}: 'outputs' must be a JSON string such as "
                         f"'[{{\"kind\": \"sequence\", \"decode\": \"ctc\"}}]': {first_line(e)}") from None
    return parse_outputs(value, where)


def _open_npz(spec: str):
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"task data {spec!r} does not exist; expected a .npz file with x (and y)")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"task data {spec!r} is not a readable .npz file: {first_line(e)}") from None
    if not hasattr(data, "files"):
        raise InputError(f"task data {spec!r} holds a single array; expected a .npz archive with "
                         "x (and optionally y, metric)")
    return data


def _npz_inputs(data, spec: str, names: list | None) -> list:
    """The arrays of a ``.npz`` that are model inputs: ``["x"]`` for a model with one input (or
    one not known yet), the model's input ``names`` for a model with several."""
    files = sorted(data.files)
    if names is None:
        if "x" not in files:
            raise InputError(f"task data {spec!r} has arrays {files}; expected x (and optionally y, metric, "
                             "outputs), or for a model with several inputs one array per input, named as it")
        unknown = [f for f in files if f not in ("x", *NPZ_KEYS)]
        if unknown:
            raise InputError(f"task data {spec!r} has unknown array(s) {unknown}; expected x, y, metric, outputs")
        return ["x"]
    missing = [n for n in names if n not in files]
    if missing:
        raise InputError(f"task data {spec!r} has no array for input(s) {missing}; the model takes inputs "
                         f"{names}: one array per input, named as it (N, *the input's shape), and "
                         "optionally y, metric, outputs")
    unknown = [f for f in files if f not in (*names, *NPZ_KEYS)]
    if unknown:
        raise InputError(f"task data {spec!r} has array(s) {unknown} that are no input of the model; "
                         f"its inputs are {names} (and a task may hold y, metric, outputs)")
    return list(names)


def load_npz(spec: str, seed: int, input_shape: tuple | dict | None):
    """A task from a ``.npz`` with ``x`` (N, ...), optional ``y`` (N, ...) and optional ``metric``
    (a string), split with ``split_arrays``. For a model with several inputs (``input_shape``
    a dict by input name), one array per input instead of ``x``, named as the input, each
    (N, *the input's shape) in the input's dtype."""
    several = isinstance(input_shape, dict) and len(input_shape) > 1
    with _open_npz(spec) as data:
        try:
            names = _npz_inputs(data, spec, list(input_shape) if several else None)
            x = {n: data[n] for n in names} if several else data["x"]
            y = data["y"] if "y" in data.files else None
            metric = str(data["metric"]) if "metric" in data.files else None
            outputs = npz_outputs(data, spec) if "outputs" in data.files else ()
        except ValueError as e:  # object arrays would need unpickling
            raise InputError(f"task data {spec!r}: {first_line(e)}; arrays must be numeric") from None
    what = f"task data {spec!r}"
    if metric == "agreement":  # asked to compare with the reference model only: drop targets
        y = None
    if not several:
        x = _add_channel_axis(np.asarray(x), input_shape)
    if y is not None and len(y) != count(x):
        raise InputError(f"{what}: {count(x)} inputs but {len(y)} targets")
    if y is not None and metric in (None, "top1") and _is_labels(y):
        y = y.astype(np.int64)
    idx = split_arrays(x, y if (metric in (None, "top1")) else None, seed, what)
    parts = {k: (take(x, i), None if y is None else y[i]) for k, i in idx.items()}
    name = Path(spec).stem
    return task_from_data(TaskData(train=parts["train"], calib=parts["calib"], test=parts["test"],
                                   val=parts["val"], metric=metric, name=name, outputs=outputs), name, seed, what)


def _add_channel_axis(x: np.ndarray, input_shape: tuple | None) -> np.ndarray:
    """(N, H, W) images for a model taking (1, 1, H, W): add the channel axis."""
    if input_shape is not None and x.ndim == len(input_shape) - 1 and \
            tuple(input_shape[2:]) == x.shape[1:] and input_shape[1] == 1:
        return x[:, None]
    return x


# -- image folders ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ImagePreprocess:
    """How images become model inputs: resize to ``size`` (int or (height, width)), convert to
    ``channels`` (1: grayscale, 3: RGB), scale to [0, 1], then ``(x - mean) / std`` per channel.

    Unset fields come from the model's input shape (size, channels), else from the first image;
    ``mean`` / ``std`` unset are the training split's per-channel statistics.
    """

    size: int | tuple | None = None
    channels: int | None = None
    mean: float | tuple | None = None
    std: float | tuple | None = None

    def __post_init__(self):
        if self.channels not in (None, 1, 3):
            raise InputError(f"preprocess channels must be 1 or 3, got {self.channels!r}")
        size = self.size
        if size is not None:
            dims = (size, size) if isinstance(size, int) else tuple(size)
            if len(dims) != 2 or not all(isinstance(d, int) and d >= 1 for d in dims):
                raise InputError(f"preprocess size must be a positive integer or [height, width], got {size!r}")
            object.__setattr__(self, "size", dims)
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is None:
                continue
            vals = (v,) if isinstance(v, (int, float)) else tuple(v)
            if not vals or not all(isinstance(a, (int, float)) for a in vals):
                raise InputError(f"preprocess {name} must be a number or a list of numbers, got {v!r}")
            if name == "std" and any(a <= 0 for a in vals):
                raise InputError(f"preprocess std must be > 0, got {v!r}")
            object.__setattr__(self, name, tuple(float(a) for a in vals))

    @classmethod
    def coerce(cls, value, what: str) -> "ImagePreprocess":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise InputError(f"{what}: preprocess must be a mapping of size, channels, mean, std; "
                             f"got {type(value).__name__}")
        unknown = sorted(set(value) - {"size", "channels", "mean", "std"})
        if unknown:
            raise InputError(f"{what}: unknown preprocess key(s) {unknown}; expected size, channels, mean, std")
        return cls(**value)


def _class_folders(spec: str) -> list[tuple[str, list[Path]]]:
    root = Path(spec)
    classes = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                       and not f.name.startswith("."))
        classes.append((d.name, files))
    return classes


def check_image_folder(spec: str) -> None:
    """``InputError`` unless ``spec`` is a folder with at least two class sub-folders, each with an
    image, Pillow is installed, and ``preprocess.yaml`` (if any) is valid."""
    classes = _class_folders(spec)
    if len(classes) < 2:
        raise InputError(f"task folder {spec!r} has {len(classes)} class sub-folder(s); expected one "
                         "sub-folder of images per class (at least two), e.g. cat/1.png, dog/2.png")
    empty = [c for c, files in classes if not files]
    if empty:
        raise InputError(f"task folder {spec!r}: class folder(s) {empty} hold no image "
                         f"({', '.join(IMAGE_SUFFIXES)})")
    _read_preprocess_file(spec)
    _pillow(spec)


def _pillow(spec: str):
    try:
        from PIL import Image
    except ImportError:
        raise InputError(f"task folder {spec!r}: reading images needs Pillow (pip install pillow)") from None
    return Image


def _read_preprocess_file(spec: str) -> dict | None:
    path = Path(spec) / PREPROCESS_FILE
    if not path.is_file():
        return None
    import yaml

    try:
        value = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise InputError(f"{str(path)!r} is not valid YAML: {first_line(e)}") from None
    ImagePreprocess.coerce(value, str(path))
    return value


def load_image_folder(spec: str, seed: int, input_shape: tuple | None, preprocess=None):
    """A ``top1`` task from an image folder (one sub-folder per class, classes sorted by name)."""
    check_image_folder(spec)
    Image = _pillow(spec)
    what = f"task folder {spec!r}"
    if preprocess is None:
        preprocess = _read_preprocess_file(spec)
    pre = ImagePreprocess.coerce(preprocess, what)
    classes = _class_folders(spec)
    files = [(f, label) for label, (_, fs) in enumerate(classes) for f in fs]
    size, channels = pre.size, pre.channels
    if input_shape is not None and len(input_shape) == 4:
        size = size or tuple(input_shape[2:])
        channels = channels or input_shape[1]
    images = []
    for path, _ in files:
        try:
            with Image.open(path) as im:
                im.load()
                if channels is None:
                    channels = 1 if im.mode in ("1", "L", "I", "I;16", "F") else 3
                im = im.convert("L" if channels == 1 else "RGB")
                if size is None:
                    size = (im.height, im.width)
                if (im.height, im.width) != tuple(size):
                    im = im.resize((size[1], size[0]), Image.BILINEAR)
                a = np.asarray(im, dtype=np.float32) / 255.0
        except (OSError, ValueError) as e:
            raise InputError(f"{what}: cannot read image {str(path)!r}: {first_line(e)}") from None
        images.append(a[None] if channels == 1 else a.transpose(2, 0, 1))
    x = np.stack(images)
    y = np.array([label for _, label in files], dtype=np.int64)
    idx = split_arrays(x, y, seed, what)
    mean = np.array(pre.mean, np.float32) if pre.mean else x[idx["train"]].mean(axis=(0, 2, 3))
    std = np.array(pre.std, np.float32) if pre.std else x[idx["train"]].std(axis=(0, 2, 3)) + 1e-8
    for name, v in (("mean", mean), ("std", std)):
        if v.size not in (1, channels):
            raise InputError(f"{what}: preprocess {name} has {v.size} values for {channels} channel(s)")
    x = ((x - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)).astype(np.float32)
    parts = {k: (x[i], y[i]) for k, i in idx.items()}
    name = Path(spec).resolve().name
    return task_from_data(TaskData(train=parts["train"], calib=parts["calib"], test=parts["test"],
                                   val=parts["val"], metric="top1", num_classes=len(classes),
                                   name=name, classes=tuple(c for c, _ in classes)), name, seed, what)
