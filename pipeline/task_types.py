"""What a task is: ``Split`` (inputs and targets) and ``Task`` (fixed splits and the metric that
scores them).

``tasks`` (the built-in tasks, ``load_task``) and ``task_sources`` (user tasks: factories,
``.npz`` files, image folders) both build these, so the types live below both.

Example:
    >>> import numpy as np
    >>> from edgeopt.pipeline.task_types import Split
    >>> s = Split(np.zeros((5, 2), np.float32), np.arange(5))
    >>> len(s), len(s.head(2))
    (5, 2)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeopt.compress.fidelity import compare_outputs
from edgeopt.core.errors import InputError

# metric -> True when a higher score is better.
METRICS = {"top1": True, "agreement": True, "cosine": True, "mse": False, "mae": False}


def count(x) -> int:
    """The number of samples in task inputs: an array (N, ...) or ``{input name: (N, ...)}``."""
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def take(x, index):
    """The samples ``index`` (a slice or an index array) of task inputs, in the same form."""
    return {k: v[index] for k, v in x.items()} if isinstance(x, dict) else x[index]


def sample(x, i: int):
    """What the model is fed for sample ``i``: ``x[i:i + 1]`` of an array (the batch-1 axis
    kept), ``{name: array[i]}`` of per-input arrays (each row is the input's whole shape).

    >>> sample(np.zeros((3, 4)), 1).shape, sample({"a": np.zeros((3, 1, 4)), "sr": np.arange(3)}, 2)["sr"]
    ((1, 4), np.int64(2))
    """
    return {k: v[i] for k, v in x.items()} if isinstance(x, dict) else x[i:i + 1]


def sample_shape(x):
    """The shape of one sample: ``x.shape[1:]``, or ``{input name: shape}`` of per-input arrays."""
    return {k: tuple(v.shape[1:]) for k, v in x.items()} if isinstance(x, dict) else tuple(x.shape[1:])


@dataclass(frozen=True)
class Split:
    """Inputs and targets (N, ...), or no targets (``y is None``).

    Inputs are one float32 array (N, ...) for a model with one input, each row without the
    model's batch-1 axis; for a model with several inputs, ``{input name: array}``, each array
    (N, *that input's whole shape) in the input's own dtype (``sample`` makes a feed of row i).
    Targets are int64 class indices (N,) for ``top1`` tasks and float32 arrays for ``mse`` /
    ``mae`` / ``cosine`` tasks. ``len(split)`` is the number of samples, labelled or not.
    """

    x: np.ndarray | dict
    y: np.ndarray | None

    def __len__(self) -> int:
        return count(self.x)

    def head(self, n: int | None) -> "Split":
        """The first ``n`` samples (all of them when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        return Split(take(self.x, slice(0, n)), None if self.y is None else self.y[:n])


@dataclass(frozen=True)
class Task:
    """A dataset with fixed splits and the metric that scores predictions."""

    name: str
    metric: str
    input_shape: tuple | dict  # dict: {input name: shape} for a model with several inputs
    num_classes: int
    train: Split
    val: Split
    calib: Split
    test: Split
    model: str = field(default="digits_cnn")  # the zoo model the task is built for ("" if none)
    classes: tuple = ()  # class names, index = label, when the task knows them
    # One group value per test sample (a user task's own slices: site, device, age band, ...),
    # reported per group by edgeopt.pipeline.evaluate; None when the task declares none.
    test_groups: np.ndarray | None = None
    # What each model output is (``edgeopt.pipeline.output_quality.OutputSpec``, in the model's
    # output order): how each is compared with fp32's; () when the task declares none.
    outputs: tuple = ()

    @property
    def labelled(self) -> bool:
        return self.test.y is not None

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger ``score`` is better (False for the error metrics mse and mae)."""
        return METRICS[self.metric]

    def score(self, outputs: np.ndarray, split: str = "test") -> float:
        """The task's metric of model outputs on a split.

        ``top1``: accuracy of logits (N, classes) or predicted labels (N,). ``mse`` / ``mae``:
        mean squared / absolute error of outputs against the targets. ``cosine``: mean cosine
        similarity of each output to its target embedding. Unlabelled tasks cannot be scored
        (compare variants with ``agreement``).
        """
        y = getattr(self, split).y
        if y is None:
            raise InputError(f"task {self.name!r} has no labels; it scores agreement, not {self.metric}")
        pred = np.asarray(outputs)
        if self.metric == "top1":
            if pred.ndim == 2:
                pred = pred.argmax(axis=1)
            if pred.shape != y.shape:
                raise InputError(f"{len(pred)} predictions for a split of {len(y)} samples")
            return float(np.mean(pred == y))
        if len(pred) != len(y) or pred.size != y.size:
            raise InputError(f"outputs of shape {pred.shape} for targets of shape {y.shape}")
        return compare_outputs(pred.reshape(y.shape), y, self.metric)

    def agreement(self, outputs: np.ndarray, reference: np.ndarray) -> float:
        """How close a variant's outputs are to the reference (fp32) model's on the same inputs.

        Top-1 agreement (fraction of equal argmax) for ``top1`` and ``agreement`` tasks with
        class scores (N, C), mean cosine similarity for other outputs of those and for ``cosine``
        tasks (never exact float equality: fp32 + 1e-6 agrees), and the error metric itself (mse /
        mae of the outputs against the reference outputs, lower is better) for regression tasks.
        """
        a, b = np.asarray(outputs), np.asarray(reference)
        if a.shape != b.shape:
            raise InputError(f"outputs of shape {a.shape} vs reference outputs of shape {b.shape}")
        if self.metric in ("top1", "agreement"):
            if a.ndim == 2:
                return float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))
            if a.ndim == 1 and np.issubdtype(a.dtype, np.integer):  # predicted labels
                return float(np.mean(a == b))
            return compare_outputs(a, b, "cosine")
        return compare_outputs(a, b, self.metric)
