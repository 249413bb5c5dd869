"""Beyond top-1: what compression does to classes, slices, calibration and robustness.

A compressed model can keep fp32's mean accuracy and still lose a few classes or rare inputs
badly (Hooker et al. 2019, "What do compressed deep neural networks forget?": the
*compression-identified exemplars*). For every variant of a classification study this module
adds to the report entry (``measure.measure_entry`` calls ``Evaluation.evaluate``):

* ``per_class``: accuracy per class next to fp32's, and ``worst_class`` (the largest drop);
* ``slices``: accuracy per slice next to fp32's: brightness and contrast terciles of image
  inputs (per-sample mean and standard deviation), and the groups a user task declares
  (``TaskData.groups``);
* ``ece`` / ``ece_fp32`` / ``calibration``: expected calibration error over 15 equal-width
  confidence bins (the softmax's top probability) and the bins of the reliability diagram;
* ``robustness`` / ``invariance``: accuracy under seeded, label-preserving perturbations
  (Gaussian noise, small shifts, brightness, contrast) on a subset of the test split, next to
  fp32's under the same perturbed inputs, and the agreement of a variant with its own clean
  predictions (1.0: the perturbation changed none of its answers);
* ``exemplars``: the test inputs where the variant's top-1 differs from fp32's, counted per
  class, saved as ``exemplars/<variant>--<target>.npz`` in the study folder with a thumbnail
  sheet (``.png``) for image tasks.

Outputs of non-classifiers (regression, embeddings) get none of these fields.

Example:
    >>> import numpy as np
    >>> from edgeopt.pipeline.evaluate import expected_calibration_error
    >>> logits = np.array([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0], [0.0, 4.0]])
    >>> round(expected_calibration_error(logits, np.array([0, 1, 1, 1]))["ece"], 3)
    0.232
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgeopt.core.config import StepConfig
from edgeopt.core.errors import InputError

from .report_figures import png_bytes
from .task_types import count, take

ECE_BINS = 15
# Perturbation strengths, in units of the test inputs' standard deviation (inputs are usually
# normalised, so raw pixel units would mean different things for different tasks).
NOISE_STD = 0.2          # Gaussian noise
BRIGHTNESS = 0.3         # added to every pixel
CONTRAST = 0.6           # each image's deviation from its own mean is scaled by this
MAX_SHIFT = 2            # pixels, each direction; the uncovered border takes the image's minimum
SLICE_NAMES = ("low", "mid", "high")


@dataclass(frozen=True)
class EvaluateConfig(StepConfig):
    """The recipe's ``evaluate`` section (every key optional).

    ``enabled``: False skips everything below (entries keep accuracy and agreement only).
    ``robustness``: accuracy under perturbations (the costly part: ``samples`` x 4 more runs
    per variant and target). ``samples``: how many test inputs (a seeded random subset) the
    perturbations use. ``exemplars``: save the inputs where a variant disagrees with fp32.
    ``thumbnails``: at most this many exemplars drawn in the thumbnail sheet. ``seed``: the
    subset and the noise.
    """

    enabled: bool = True
    robustness: bool = True
    samples: int = 1000
    exemplars: bool = True
    thumbnails: int = 40
    seed: int = 0

    def validate(self):
        if self.samples < 1:
            raise InputError(f"samples must be an integer >= 1, got {self.samples!r}")
        if self.thumbnails < 0:
            raise InputError(f"thumbnails must be an integer >= 0, got {self.thumbnails!r}")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (shifted by the row maximum, so large logits do not overflow)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """ECE of ``logits`` against ``labels``: the mean |accuracy - confidence| over equal-width
    confidence bins, weighted by how many samples fall in each (Guo et al. 2017).

    Returns ``{"ece", "bins", "confidence", "accuracy", "count"}``; the three lists have one
    value per bin (``None`` for an empty bin): the reliability diagram.
    """
    p = softmax(logits)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == labels).astype(np.float64)
    # Bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of exactly 0 cannot occur.
    idx = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    sum_conf = np.bincount(idx, weights=conf, minlength=bins)
    sum_acc = np.bincount(idx, weights=correct, minlength=bins)
    nonempty = count > 0
    ece = float(np.sum(np.abs(sum_acc[nonempty] - sum_conf[nonempty])) / max(len(labels), 1))
    mean = lambda s: [float(a / n) if n else None for a, n in zip(s, count)]  # noqa: E731
    return {"ece": ece, "bins": bins, "confidence": mean(sum_conf), "accuracy": mean(sum_acc),
            "count": [int(n) for n in count]}


def per_class(pred: np.ndarray, ref_pred: np.ndarray, labels: np.ndarray, classes: tuple,
              num_classes: int) -> list[dict]:
    """Accuracy per class next to fp32's (``change`` = variant - fp32, in fraction points)."""
    rows = []
    for c in range(num_classes):
        mask = labels == c
        n = int(mask.sum())
        if n == 0:
            continue
        acc = float(np.mean(pred[mask] == c))
        ref = float(np.mean(ref_pred[mask] == c))
        rows.append({"class": c, "name": class_name(c, classes), "n": n, "accuracy": acc,
                     "fp32_accuracy": ref, "change": acc - ref})
    return rows


def worst_class(rows: list[dict]) -> dict | None:
    """The class that lost the most against fp32 (ties: the lower accuracy, then the lower index)."""
    if not rows:
        return None
    worst = min(rows, key=lambda r: (r["change"], r["accuracy"], r["class"]))
    return {k: worst[k] for k in ("class", "name", "n", "accuracy", "fp32_accuracy", "change")}


def class_name(c: int, classes: tuple) -> str:
    return str(classes[c]) if c < len(classes) else str(c)


def image_like(x: np.ndarray | dict) -> bool:
    """Inputs of shape (N, C, H, W) with small C: images, which get brightness/contrast slices,
    shifts and thumbnails (never the per-input arrays of a model with several inputs)."""
    return not isinstance(x, dict) and x.ndim == 4 and x.shape[1] in (1, 3, 4) and x.shape[2] > 4 and x.shape[3] > 4


def slice_masks(x: np.ndarray, groups: np.ndarray | None) -> dict:
    """``{slice kind: [(label, boolean mask), ...]}``: brightness and contrast terciles of image
    inputs (thresholds from these inputs, so every variant is sliced the same way) and one
    slice per value of the task's ``groups``."""
    out: dict = {}
    if image_like(x):
        flat = x.reshape(len(x), -1)
        for kind, stat in (("brightness", flat.mean(axis=1)), ("contrast", flat.std(axis=1))):
            lo, hi = np.quantile(stat, [1 / 3, 2 / 3])
            out[kind] = [(f"{SLICE_NAMES[0]} (< {lo:.3g})", stat < lo),
                         (f"{SLICE_NAMES[1]}", (stat >= lo) & (stat < hi)),
                         (f"{SLICE_NAMES[2]} (>= {hi:.3g})", stat >= hi)]
    if groups is not None:
        values = np.asarray(groups)
        out["group"] = [(str(g), values == g) for g in np.unique(values)]
    return out


def perturbations(x: np.ndarray, seed: int) -> dict:
    """Label-preserving perturbations of ``x`` (seeded): ``noise`` always; ``shift``,
    ``brightness`` and ``contrast`` for image inputs. Strengths are the module constants."""
    rng = np.random.default_rng(seed)
    std = float(x.std()) or 1.0
    out = {"noise": (x + rng.normal(0.0, NOISE_STD * std, x.shape)).astype(np.float32)}
    if image_like(x):
        out["shift"] = shift_images(x, rng)
        out["brightness"] = (x + BRIGHTNESS * std).astype(np.float32)
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        out["contrast"] = (mean + CONTRAST * (x - mean)).astype(np.float32)
    return out


def shift_images(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image moved by a random non-zero (dy, dx) of at most ``MAX_SHIFT`` pixels; the
    uncovered border takes the image's minimum (the background of most datasets)."""
    out = np.empty_like(x)
    h, w = x.shape[2:]
    for i, img in enumerate(x):
        dy, dx = 0, 0
        while dy == 0 and dx == 0:
            dy, dx = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=2)
        out[i] = img.min()
        src = img[:, max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
        out[i, :, max(0, dy):max(0, dy) + src.shape[1], max(0, dx):max(0, dx) + src.shape[2]] = src
    return out


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


class Evaluation:
    """What every variant is evaluated against, prepared once per study.

    ``reference_fn`` maps a batch of inputs to fp32's outputs (the torch model, batched); it runs
    once here on the perturbed subsets. ``out``: the study folder (exemplars go to
    ``out/exemplars``); ``None`` keeps exemplars out of files.

    Example:
        >>> import numpy as np
        >>> from edgeopt.pipeline.tasks import load_task
        >>> from edgeopt.pipeline.evaluate import EvaluateConfig, Evaluation
        >>> task = load_task("digits", limit=60)
        >>> w = np.random.default_rng(0).standard_normal((32 * 32, 10)).astype(np.float32)
        >>> fn = lambda x: x.reshape(len(x), -1) @ w
        >>> ev = Evaluation(task, fn(task.test.x), fn, EvaluateConfig(samples=20), out=None)
        >>> entry = ev.evaluate(fn(task.test.x), lambda a: fn(a), "fp32/onnxruntime")
        >>> entry["worst_class"]["change"], entry["exemplars"]["count"]
        (0.0, 0)
        >>> entry["robustness"]["perturbations"]["noise"]["agreement"]  # fp32 against itself
        1.0
    """

    def __init__(self, task, reference: np.ndarray, reference_fn: Callable[[np.ndarray], np.ndarray],
                 config: EvaluateConfig = EvaluateConfig(), out: str | Path | None = None):
        self.task, self.config = task, config
        self.out = None if out is None else Path(out)
        self.reference = np.asarray(reference)
        # Class scores: (N, classes) with more than one class (a single column has no top-1).
        self.classifier = (task.metric in ("top1", "agreement") and self.reference.ndim == 2
                           and self.reference.shape[1] > 1)
        if not (config.enabled and self.classifier):
            return
        x = task.test.x
        self.labels = task.test.y if task.metric == "top1" else None
        self.ref_pred = self.reference.argmax(axis=1)
        self.slices = slice_masks(x, getattr(task, "test_groups", None))
        self.subset = np.sort(np.random.default_rng(config.seed).permutation(count(x))[:config.samples])
        # the perturbations are of one input; a model with several (audio and a recurrent state)
        # has no one input to perturb
        robust = config.robustness and not isinstance(x, dict)
        self.perturbed = perturbations(x[self.subset], config.seed) if robust else {}
        self.perturbed_ref = {k: np.asarray(reference_fn(v)).argmax(axis=1) for k, v in self.perturbed.items()}

    def evaluate(self, outputs: np.ndarray, run_one: Callable[[np.ndarray], np.ndarray], label: str) -> dict:
        """The entry fields for a variant's ``outputs`` on the test split; ``run_one`` runs one
        batch-1 input (the perturbed subsets go through it); ``label`` names the exemplar files."""
        outputs = np.asarray(outputs)
        if not (self.config.enabled and self.classifier) or outputs.shape != self.reference.shape:
            return {}
        pred = outputs.argmax(axis=1)
        fields: dict = {}
        y = self.labels
        if y is not None:
            rows = per_class(pred, self.ref_pred, y, self.task.classes, self.task.num_classes)
            fields["per_class"] = rows
            fields["worst_class"] = worst_class(rows)
            fields["worst_class_accuracy"] = min(r["accuracy"] for r in rows) if rows else None
            fields["slices"] = {kind: [{"slice": name, "n": int(m.sum()),
                                        "accuracy": float(np.mean(pred[m] == y[m])) if m.any() else None,
                                        "fp32_accuracy": float(np.mean(self.ref_pred[m] == y[m])) if m.any() else None}
                                       for name, m in masks] for kind, masks in self.slices.items()}
            cal = expected_calibration_error(outputs, y)
            fields["ece"] = cal.pop("ece")
            fields["ece_fp32"] = expected_calibration_error(self.reference, y)["ece"]
            fields["calibration"] = cal
        if self.perturbed:
            from .tasks import collect

            clean = pred[self.subset]
            ys = None if y is None else y[self.subset]
            rob = {"samples": int(len(self.subset)), "seed": self.config.seed,
                   "clean_accuracy": None if ys is None else float(np.mean(clean == ys)),
                   "fp32_clean_accuracy": None if ys is None else float(np.mean(self.ref_pred[self.subset] == ys)),
                   "perturbations": {}}
            invariance = {}
            for kind, xp in self.perturbed.items():
                p = collect(run_one, xp).argmax(axis=1)
                ref = self.perturbed_ref[kind]
                invariance[kind] = float(np.mean(p == clean))
                rob["perturbations"][kind] = {
                    "accuracy": None if ys is None else float(np.mean(p == ys)),
                    "fp32_accuracy": None if ys is None else float(np.mean(ref == ys)),
                    "agreement": float(np.mean(p == ref)),
                    "invariance": invariance[kind],
                    "fp32_invariance": float(np.mean(ref == self.ref_pred[self.subset]))}
            fields["robustness"] = rob
            fields["invariance"] = invariance
        if self.config.exemplars:
            fields["exemplars"] = self._exemplars(pred, label)
        return fields

    def _exemplars(self, pred: np.ndarray, label: str) -> dict:
        """The inputs where ``pred`` differs from fp32's top-1, counted per class (the true label,
        or fp32's prediction without labels), saved under ``out/exemplars``."""
        idx = np.flatnonzero(pred != self.ref_pred)
        by = self.labels if self.labels is not None else self.ref_pred
        counts = np.bincount(by[idx], minlength=max(self.task.num_classes, 1)) if len(idx) else []
        info = {"count": int(len(idx)),
                "per_class": {class_name(c, self.task.classes): int(n) for c, n in enumerate(counts) if n},
                "file": None, "thumbnails": None}
        if self.out is None:
            return info
        folder = self.out / "exemplars"
        folder.mkdir(parents=True, exist_ok=True)
        name = slug(label.replace("/", "--"))
        x = take(self.task.test.x, idx)
        arrays = {**({f"x_{k}": v for k, v in x.items()} if isinstance(x, dict) else {"x": x}),
                  "index": idx.astype(np.int64), "pred": pred[idx].astype(np.int64),
                  "fp32_pred": self.ref_pred[idx].astype(np.int64)}
        if self.labels is not None:
            arrays["y"] = self.labels[idx].astype(np.int64)
        np.savez_compressed(folder / f"{name}.npz", **arrays)
        info["file"] = f"exemplars/{name}.npz"
        if image_like(self.task.test.x) and len(idx) and self.config.thumbnails:
            from edgeopt.core.files import write_bytes_atomic

            write_bytes_atomic(folder / f"{name}.png", thumbnail_sheet(arrays, self.task.classes,
                                                                        self.config.thumbnails, label))
            info["thumbnails"] = f"exemplars/{name}.png"
        return info


def thumbnail_sheet(arrays: dict, classes: tuple, limit: int, title: str) -> bytes:
    """A PNG grid of up to ``limit`` exemplars, each titled ``true: fp32 -> variant`` (or
    ``fp32 -> variant`` without labels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = arrays["x"][:limit]
    n = len(x)
    cols = min(10, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.25 * cols, 1.45 * rows + 0.4), dpi=100, squeeze=False)
    short = lambda c: class_name(int(c), classes)[:11]  # noqa: E731
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:n]):
        img = x[i]
        img = img[0] if img.shape[0] == 1 else np.moveaxis(img[:3], 0, -1)
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-12)
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        head = f"{short(arrays['y'][i])}\n" if "y" in arrays else ""
        ax.set_title(f"{head}{short(arrays['fp32_pred'][i])}>{short(arrays['pred'][i])}", fontsize=6.5)
    total = len(arrays["x"])
    fig.suptitle(f"{title}: {total} input(s) where it disagrees with fp32"
                 + (f" (first {n} shown)" if total > n else "")
                 + ("; label / fp32 > variant" if "y" in arrays else "; fp32 > variant"), fontsize=8)
    return png_bytes(fig)
