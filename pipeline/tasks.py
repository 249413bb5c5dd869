"""Built-in tasks: data splits, a training loop and the top-1 metric.

The ``digits`` task uses scikit-learn's bundled handwritten digits (1,797 real 8x8 images, no
download), upsampled to 32x32, with a fixed seeded stratified split into train / validation /
calibration / test.

Example:
    >>> from edgeopt.pipeline.tasks import load_task
    >>> task = load_task("digits")
    >>> task.test.x.shape, task.test.x.dtype
    ((360, 1, 32, 32), dtype('float32'))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgeopt.core.errors import InputError

TASKS = ("digits", "random")


@dataclass(frozen=True)
class Split:
    """Inputs (N, ...) float32 and integer labels (N,), or no labels (``y is None``)."""

    x: np.ndarray
    y: np.ndarray | None

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Task:
    """A dataset with fixed splits and the metric that scores predictions."""

    name: str
    metric: str
    input_shape: tuple
    num_classes: int
    train: Split
    val: Split
    calib: Split
    test: Split
    model: str = field(default="digits_cnn")  # the zoo model the task is built for

    @property
    def labelled(self) -> bool:
        return self.test.y is not None

    def score(self, logits_or_labels: np.ndarray, split: str = "test") -> float:
        """Top-1 accuracy of predictions (logits (N, classes) or labels (N,)) on a split."""
        y = getattr(self, split).y
        if y is None:
            raise InputError(f"task {self.name!r} has no labels; it scores agreement, not accuracy")
        pred = logits_or_labels
        if pred.ndim == 2:
            pred = pred.argmax(axis=1)
        if pred.shape != y.shape:
            raise InputError(f"{len(pred)} predictions for a split of {len(y)} samples")
        return float(np.mean(pred == y))


def load_task(name: str, seed: int = 0, input_shape: tuple | None = None) -> Task:
    """A built-in task by name.

    ``digits``: scikit-learn's handwritten digits at 1x32x32 with labels. ``random``: seeded
    normal inputs of ``input_shape`` without labels, for speed and fidelity studies of models that
    have no built-in dataset (variants are scored by top-1 agreement with the fp32 model).
    """
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    if name == "random":
        if input_shape is None:
            raise InputError("the random task needs the model's input shape")
        return _random(seed, tuple(input_shape))
    return _digits(seed)


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


@dataclass(frozen=True)
class TrainConfig:
    """Supervised training settings (defaults train digits_cnn to ~99% in seconds)."""

    epochs: int = 12
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 1e-4
    shift: int = 2  # random translation augmentation, pixels
    seed: int = 0

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be an integer >= 1, got {v!r}")
        if not self.lr > 0:
            raise InputError(f"lr must be > 0, got {self.lr!r}")
        if not isinstance(self.shift, int) or self.shift < 0:
            raise InputError(f"shift must be an integer >= 0, got {self.shift!r}")


def train(model, task: Task, config: TrainConfig = TrainConfig(), progress: bool = True):
    """Train a copy of ``model`` on ``task.train``; returns the trained copy in eval mode.

    Seeded: the same model, task and config give the same weights.
    """
    import copy

    import torch
    from tqdm.auto import tqdm

    from edgeopt.compress.augment import random_shift

    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    student = copy.deepcopy(model).train()
    x = torch.from_numpy(task.train.x)
    y = torch.from_numpy(task.train.y)
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
            loss = torch.nn.functional.cross_entropy(student(xb), y[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return student.eval()


def predict(run_one: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """Top-1 labels from a batch-1 callable (e.g. ``lambda a: runner.run(a)[0]``) over ``x``."""
    return np.array([int(np.argmax(run_one(x[i:i + 1]))) for i in range(len(x))], dtype=np.int64)


def torch_logits(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of a torch model over ``x`` in batches (for training-time evaluation)."""
    import torch

    outs = []
    with torch.inference_mode():
        for s in range(0, len(x), batch_size):
            outs.append(model(torch.from_numpy(x[s:s + batch_size])).numpy())
    return np.concatenate(outs)
