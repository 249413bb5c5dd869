"""Tasks: data splits, the metric that scores them, and a training loop.

A task is fixed train / validation / calibration / test splits plus a metric. ``load_task(spec)``
accepts five kinds of ``spec`` (``check_task_spec(spec)`` validates one cheaply, before any work):

* a built-in name: ``digits`` (scikit-learn's 1,797 8x8 digits at 1x32x32, no download),
  ``fashion_mnist`` (the full Fashion-MNIST set read from the IDX files of the Debian package
  ``dataset-fashion-mnist``) or ``random`` (seeded normal inputs, no labels);
* ``module.path:factory``: a function returning the splits (the contract is ``TaskData``, in
  ``edgeopt.pipeline.task_sources``);
* a ``.npz`` file with ``x`` and optionally ``y`` (no ``y``: unlabelled, scored by agreement);
* a folder of images, one sub-folder per class (ImageFolder layout), with a preprocessing spec.

Metrics (``Task.metric``): ``top1`` (accuracy, labels are class indices), ``mse`` / ``mae``
(regression error, lower is better), ``cosine`` (mean cosine similarity to reference
embeddings) and ``agreement`` (no labels: variants are compared with the fp32 model only).

Example:
    >>> from edgeopt.pipeline.tasks import load_task
    >>> task = load_task("digits")
    >>> task.test.x.shape, task.test.x.dtype, len(task.test)
    ((360, 1, 32, 32), dtype('float32'), 360)
    >>> task.score(task.test.y), task.metric
    (1.0, 'top1')
"""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgeopt.core.config import StepConfig
from edgeopt.core.errors import InputError
from edgeopt.core.factory import resolve_factory

from .task_types import METRICS, Split, Task

TASKS = ("digits", "fashion_mnist", "random")


# Where the Debian package dataset-fashion-mnist installs the IDX files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                       "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")


def load_task(spec: str, seed: int = 0, input_shape: tuple | None = None,
              data_dir: str | os.PathLike | None = None, limit: int | None = None,
              preprocess=None, outputs=None) -> Task:
    """A task from a built-in name, ``module.path:factory``, a ``.npz`` file or an image folder.

    Args:
        spec: see the module docstring. A path that exists (or ends in ``.npz``) is data; a spec
            with ``:`` is a factory; anything else a built-in name.
        seed: seeds the splits of built-in, ``.npz`` and folder tasks (and is passed to a factory
            that takes ``seed``).
        input_shape: the model's input shape (batch first). ``random`` needs it; image folders
            take their size and channel count from it unless ``preprocess`` says otherwise;
            ``.npz`` inputs without a channel axis get one when the model wants it.
        data_dir: where ``fashion_mnist`` reads its IDX files (default ``FASHION_MNIST_DIR``).
        limit: at most this many samples per split (for quick tests).
        preprocess: image folders: an ``ImagePreprocess`` or a dict of its fields.
        outputs: what the model's outputs are (a list of mappings, ``output_quality.parse_outputs``;
            a recipe's ``task: {..., outputs: [...]}``): replaces what the task itself declares.

    Raises:
        InputError: an unknown name, a missing or malformed file or folder, a factory that fails.
    """
    from . import task_sources as ts

    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise InputError(f"limit must be an integer >= 1 or None, got {limit!r}")
    spec = str(spec)
    kind = ts.spec_kind(spec)
    if kind == "npz":
        task = ts.load_npz(spec, seed, input_shape)
    elif kind == "folder":
        task = ts.load_image_folder(spec, seed, input_shape, preprocess)
    elif kind == "factory":
        task = ts.load_factory(spec, seed=seed, input_shape=input_shape, data_dir=data_dir, limit=limit)
    elif spec == "random":
        if input_shape is None:
            raise InputError("the random task needs the model's input shape")
        task = _random(seed, tuple(input_shape))
    elif spec == "digits":
        task = _digits(seed)
    elif spec == "fashion_mnist":
        task = _fashion_mnist(seed, data_dir, limit)
    else:
        raise InputError(f"unknown task {spec!r}; expected one of {', '.join(TASKS)}, "
                         "module.path:factory, a .npz file or an image folder")
    if outputs is not None:
        import dataclasses

        from .output_quality import parse_outputs

        task = dataclasses.replace(task, outputs=parse_outputs(outputs, f"task {spec!r}"))
    return limit_task(task, limit)


def check_task_spec(spec: str, data_dir: str | os.PathLike | None = None) -> None:
    """Validate a task spec cheaply (nothing is loaded or called); ``InputError`` in one line.

    Checks that a built-in name exists (and that Fashion-MNIST's files are installed), that a
    factory's module imports and the factory is callable without arguments, that a ``.npz`` file
    holds ``x``, and that an image folder has class sub-folders with images.

    Example:
        >>> from edgeopt.pipeline.tasks import check_task_spec
        >>> check_task_spec("digits")
        >>> check_task_spec("no_such_task")
        Traceback (most recent call last):
        ...
        edgeopt.core.errors.InputError: unknown task 'no_such_task'; expected one of digits, fashion_mnist, random, module.path:factory, a .npz file or an image folder
    """
    from . import task_sources as ts

    spec = str(spec)
    kind = ts.spec_kind(spec)
    if kind == "npz":
        ts.check_npz(spec)
    elif kind == "folder":
        ts.check_image_folder(spec)
    elif kind == "factory":
        resolve_factory(spec, "task factory", "TaskData", ts.FACTORY_KEYWORDS)
    elif spec == "fashion_mnist":
        fashion_mnist_files(data_dir)
    elif spec not in TASKS:
        raise InputError(f"unknown task {spec!r}; expected one of {', '.join(TASKS)}, "
                         "module.path:factory, a .npz file or an image folder")


def limit_task(task: Task, limit: int | None) -> Task:
    """``task`` with at most ``limit`` samples per split."""
    if limit is None:
        return task
    import dataclasses

    groups = None if task.test_groups is None else task.test_groups[:limit]
    return dataclasses.replace(task, test_groups=groups, **{s: getattr(task, s).head(limit)
                                                            for s in ("train", "val", "calib", "test")})


def _random(seed: int, shape: tuple) -> Task:
    rng = np.random.default_rng(seed)

    def split(n):
        return Split(rng.standard_normal((n, *shape[1:])).astype(np.float32), None)

    return Task("random", "agreement", shape, 0, split(128), split(32), split(16), split(32), model="")


def _digits(seed: int) -> Task:
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0).unsqueeze(1)
    # 8x8 -> 32x32 so that the model sees a CNN-sized input (and the runtimes a real workload).
    x = torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    x = x.numpy()
    y = data.target.astype(np.int64)
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=360, stratify=y, random_state=seed)
    rest, val = train_test_split(rest, test_size=180, stratify=y[rest], random_state=seed)
    train, calib = train_test_split(rest, test_size=128, stratify=y[rest], random_state=seed)
    mean, std = float(x[train].mean()), float(x[train].std())
    x = ((x - mean) / std).astype(np.float32)

    def split(i):
        return Split(np.ascontiguousarray(x[i]), y[i])

    return Task("digits", "top1", (1, 1, 32, 32), 10, split(train), split(val), split(calib),
                split(test))


# -- Fashion-MNIST ------------------------------------------------------------------------

def fashion_mnist_files(data_dir: str | os.PathLike | None = None) -> dict:
    """``{"train": (images, labels), "test": (images, labels)}`` paths of the IDX files in
    ``data_dir`` (default ``FASHION_MNIST_DIR``), gzipped or not; ``InputError`` naming the
    Debian package when they are missing."""
    folder = Path(data_dir if data_dir is not None else FASHION_MNIST_DIR)
    found, missing = {}, []
    for split, names in FASHION_MNIST_FILES.items():
        paths = []
        for name in names:
            candidates = [folder / f"{name}.gz", folder / name]
            hit = next((p for p in candidates if p.is_file()), None)
            if hit is None:
                missing.append(f"{name}.gz")
            paths.append(hit)
        found[split] = tuple(paths)
    if missing:
        raise InputError(f"Fashion-MNIST is not installed in {str(folder)!r} (missing "
                         f"{', '.join(missing)}); install the Debian package {FASHION_MNIST_PACKAGE} "
                         f"(`make data` or `apt-get install {FASHION_MNIST_PACKAGE}`) or pass data_dir")
    return found


@functools.lru_cache(maxsize=8)
def read_idx(path: str | os.PathLike, count: int | None = None) -> np.ndarray:
    """An IDX file (the MNIST format, optionally gzipped) as a uint8 array of its shape; only the
    first ``count`` items when given (a small subset reads a prefix of the stream, not 26 MB).

    Cached: studies and tests load the same 60,000 images more than once per process.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            # Header: two zero bytes, a type code (0x08 = unsigned byte), the number of
            # dimensions, then one big-endian uint32 per dimension.
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08 or head[3] < 1:
                raise InputError(f"{str(path)!r} is not an unsigned-byte IDX file (bad magic number)")
            ndim = head[3]
            raw = f.read(4 * ndim)
            dims = tuple(int.from_bytes(raw[4 * i:4 * i + 4], "big") for i in range(len(raw) // 4))
            if len(dims) != ndim:
                raise InputError(f"{str(path)!r} is truncated: its IDX header is incomplete")
            if count is not None:
                dims = (min(count, dims[0]), *dims[1:])
            expected = int(np.prod(dims))
            data = f.read(expected)
            trailing = f.read(1) if count is None else b""
    except (OSError, EOFError) as e:
        raise InputError(f"{str(path)!r} is not a readable IDX file: {e}") from None
    if len(data) != expected or trailing:
        raise InputError(f"{str(path)!r} is truncated or corrupt: the IDX array of shape {dims} needs "
                         f"{expected} bytes after the header")
    array = np.frombuffer(data, dtype=np.uint8).reshape(dims)
    array.setflags(write=False)
    return array


def _fashion_mnist(seed: int, data_dir, limit: int | None = None) -> Task:
    files = fashion_mnist_files(data_dir)
    # A subset reads only the files' first images (their order is already shuffled by class).
    n_train = None if limit is None else 3 * limit
    n_test = limit
    train_x, train_y = (read_idx(p, n_train) for p in files["train"])
    test_x, test_y = (read_idx(p, n_test) for p in files["test"])
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise InputError(f"Fashion-MNIST in {str(files['train'][0].parent)!r}: image and label "
                         "counts differ")
    # Validation (5,000) and calibration (256) come out of the official training set, stratified
    # and seeded; the official 10,000-image test set stays the test split.
    n_val, n_calib = 5000, 256
    if limit is not None:  # a small subset: validation and calibration a quarter each
        n_val = n_calib = max(1, min(limit, len(train_y) // 4))
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(train_y))
    strat = train_y if len(train_y) >= 200 else None
    rest, val = train_test_split(idx, test_size=n_val, stratify=strat, random_state=seed)
    train, calib = train_test_split(rest, test_size=n_calib,
                                    stratify=None if strat is None else train_y[rest],
                                    random_state=seed)
    # Normalise with the training split's statistics (mean ~0.286, std ~0.353 on the full set).
    xt = train_x[train].astype(np.float32) / 255.0
    mean, std = float(xt.mean()), float(xt.std())

    def prep(images):
        return ((images.astype(np.float32) / 255.0 - mean) / std)[:, None, :, :]

    def split(x, y, i):
        return Split(np.ascontiguousarray(prep(x[i])), y[i].astype(np.int64))

    test_idx = np.arange(len(test_y))
    return Task("fashion_mnist", "top1", (1, 1, 28, 28), 10, split(train_x, train_y, train),
                split(train_x, train_y, val), split(train_x, train_y, calib),
                split(test_x, test_y, test_idx), model="fashion_cnn",
                classes=FASHION_MNIST_CLASSES)


# -- training -------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainConfig(StepConfig):
    """Supervised training settings (defaults train digits_cnn to ~99% in seconds)."""

    epochs: int = 12
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 1e-4
    shift: int = 2  # random translation augmentation, pixels
    seed: int = 0

    def validate(self):
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if v < 1:
                raise InputError(f"{name} must be an integer >= 1, got {v!r}")
        if not self.lr > 0:
            raise InputError(f"lr must be > 0, got {self.lr!r}")
        if self.shift < 0:
            raise InputError(f"shift must be an integer >= 0, got {self.shift!r}")


def train(model, task: Task, config: TrainConfig = TrainConfig(), progress: bool = True):
    """Train a copy of ``model`` on ``task.train``; returns the trained copy in eval mode.

    Classification tasks (``top1``) train with cross-entropy, regression tasks (``mse``,
    ``mae``) with that error, ``cosine`` tasks with 1 - cosine similarity. Seeded: the same
    model, task and config give the same weights.
    """
    import copy

    import torch
    from tqdm.auto import tqdm

    from edgeopt.compress.augment import random_shift

    if task.train.y is None:
        raise InputError(f"task {task.name!r} has no labels to train on")
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    student = copy.deepcopy(model).train()
    x = torch.from_numpy(task.train.x)
    y = torch.from_numpy(task.train.y)
    loss_fn = _loss(task.metric)
    opt = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * ((len(y) + config.batch_size - 1) // config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps)
    bar = tqdm(total=steps, desc=f"train {type(model).__name__}", disable=not progress, leave=False,
               mininterval=0.5)
    for _ in range(config.epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), config.batch_size):
            i = order[start:start + config.batch_size]
            xb = random_shift(x[i], config.shift, gen)
            loss = loss_fn(student(xb), y[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return student.eval()


def _loss(metric: str):
    import torch.nn.functional as F

    if metric == "top1":
        return F.cross_entropy
    if metric == "mse":
        return lambda out, y: F.mse_loss(out.reshape(y.shape), y)
    if metric == "mae":
        return lambda out, y: F.l1_loss(out.reshape(y.shape), y)
    if metric == "cosine":
        return lambda out, y: (1 - F.cosine_similarity(out.reshape(len(y), -1),
                                                       y.reshape(len(y), -1), dim=1)).mean()
    raise InputError(f"a {metric!r} task cannot be trained on; expected top1, mse, mae or cosine")


def collect(run_one: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """Raw outputs (N, ...) of a batch-1 callable over ``x``: what ``Task.score`` and
    ``Task.agreement`` take for every metric."""
    return np.concatenate([np.asarray(run_one(x[i:i + 1])) for i in range(len(x))])
