"""Knowledge distillation: train a student on a teacher's softened outputs plus the labels.

Classification (class labels, a ``top1`` task): loss = ``alpha * T^2 * KL(softmax(teacher/T) ||
softmax(student/T)) + (1 - alpha) * CE(student, labels)`` (Hinton et al. 2015). Regression and
embedding tasks (float targets; a task scored by ``mse``, ``mae`` or ``cosine``): loss = ``alpha *
MSE(student, teacher) + (1 - alpha) * task loss(student, targets)``, the task loss being the
task's metric as a loss (mse, mae, 1 - cosine; ``temperature`` is unused), so a pruned regression
model is fine-tuned on what it is judged by. Optional intermediate feature matching adds the MSE
between named student and teacher modules' outputs, through a learned 1x1 adapter when their
widths differ. Seeded and deterministic, with a progress bar and early stopping on a validation
split, scored by the task's metric (the best epoch's weights are kept). ``alpha=0`` is plain
fine-tuning on hard labels, the baseline that distillation is measured against. The student can
be a compressed copy of the teacher (the recovery step after lowrank or pruning) or a different,
smaller architecture trained from scratch.

Example:
    >>> import edgeopt.compress as ec  # doctest: +SKIP
    >>> from edgeopt.pipeline.tasks import load_task  # doctest: +SKIP
    >>> task = load_task("digits")  # doctest: +SKIP
    >>> student = ec.distill(pruned, ec.DistillConfig(epochs=5), task, teacher=model)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.core.config import StepConfig, config_argument
from edgeopt.core.errors import InputError
from edgeopt.core.phrases import count, said
from edgeopt.core.result import Progress, StepResult, reporter, shows_bars, unwrap

from .counting import count_params
from .history import with_record
from .pt2 import refuse_exported


@dataclass(frozen=True)
class DistillConfig(StepConfig):
    """Distillation settings.

    Args:
        epochs: maximum training epochs (>= 1).
        temperature: softmax temperature T (> 0); classification only.
        alpha: weight of the distillation term, in [0, 1]; 0 = fine-tuning on labels only.
        lr: AdamW learning rate (default 1e-3), cosine-decayed over the run.
        batch_size: samples per step.
        weight_decay: AdamW weight decay.
        patience: stop after this many epochs without a better validation score (top-1, or the
            task's metric for regression) (None: never).
        features: (student module, teacher module) name pairs whose outputs are matched.
        feature_weight: weight of the feature-matching term.
        shift: random translation augmentation in pixels for image inputs (0: off).
        seed: seeds initialisation of adapters, shuffling and augmentation.
        precompute_teacher: compute the teacher's logits for the training set once (split over
            the processes when distributed) instead of at every step; needs ``shift=0``.
    """

    epochs: int
    temperature: float = 4.0
    alpha: float = 0.7
    lr: float | None = None
    batch_size: int = 64
    weight_decay: float = 1e-4
    patience: int | None = 3
    features: tuple = ()
    feature_weight: float = 1.0
    shift: int = 0
    seed: int = 0
    precompute_teacher: bool = False

    def validate(self):
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise InputError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise InputError(f"temperature must be > 0, got {self.temperature!r}")
        if not (0 <= self.alpha <= 1):
            raise InputError(f"alpha must be in [0, 1], got {self.alpha!r}")
        if self.lr is not None and not self.lr > 0:
            raise InputError(f"lr must be > 0, got {self.lr!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InputError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise InputError(f"patience must be an integer >= 1 or None, got {self.patience!r}")
        if self.precompute_teacher and self.shift:
            raise InputError("precompute_teacher needs shift=0: augmented inputs change the teacher's logits")
        for pair in self.features:
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise InputError(f"features must be (student module, teacher module) pairs, got {pair!r}")


def distill(student, config: DistillConfig, data: Any, *, teacher=None, val: Any = None,
            progress: Progress = None, nproc: int = 1,
            checkpoint_dir: str | os.PathLike | None = None) -> StepResult:
    """Train a copy of ``student`` against ``teacher``; return it (best validation epoch).

    The step contract (``edgeopt.core.result``): input, config, data; a ``StepResult`` whose
    ``output`` is the trained module and whose history continues the student's.

    Args:
        student: the model to train, or the ``StepResult`` of the step before (not modified; a
            trained copy is returned). A model from a ``.pt2`` file trains like any module
            (``edgeopt.compress.pt2``) when its graph runs on batches; one exported with a
            fixed batch size is refused with what to do instead.
        config: ``DistillConfig``.
        data: a task (with ``.train`` and ``.val`` splits; its ``metric`` picks the loss), a
            split or ``(x, y)`` arrays, or an iterable of ``(x, y)`` batches. Integer labels
            train with cross-entropy, float targets (regression) with mse.
        teacher: the reference model (kept frozen, eval mode); required.
        val: validation data (split or ``(x, y)``) for early stopping; default the task's.
        progress: ``True`` shows a progress bar (rank 0 only when distributed).
        nproc: data-parallel processes. ``nproc > 1`` launches ``torchrun`` with that many
            workers (DistributedDataParallel, gloo on CPU) and returns rank 0's model; the global
            batch stays ``config.batch_size``, split evenly, so the result matches ``nproc=1``
            within floating-point tolerance. Inside a ``torchrun`` job that already initialized
            ``torch.distributed``, ``distill`` joins it and ``nproc`` is ignored.
        checkpoint_dir: save a checkpoint after every epoch here (model, optimizer, scheduler,
            epoch, early-stopping state); a later call with the same folder and config resumes
            from the last one and ends where an uninterrupted run would.

    Raises:
        InputError: ``config`` is not a ``DistillConfig``, no teacher, no or empty training
            data, or an ``nproc`` the data cannot be split over.
    """
    import torch.distributed as dist

    config = config_argument("distill", config, DistillConfig,
                             "distill(student, DistillConfig(...), data, teacher=teacher)", default=False)
    if teacher is None:
        raise InputError("distill needs teacher=: the model whose outputs the student learns")
    if data is None:
        raise InputError("distill needs training data (a task, a split, (x, y) arrays or batches)")
    module, history = unwrap(student)
    from .pt2 import lifted_if_exported

    module = lifted_if_exported(module)  # a bare .module() of a .pt2 program: its layers
    teacher, _ = unwrap(teacher)
    if not isinstance(nproc, int) or nproc < 1:
        raise InputError(f"nproc must be an integer >= 1, got {nproc!r}")
    bars = shows_bars(progress)
    if nproc > 1 and not (dist.is_available() and dist.is_initialized()):
        model, record = _launch(module, teacher, data, config, val, nproc, checkpoint_dir, bars)
    else:
        model, record = train_distill(module, teacher, data, config, val, bars, checkpoint_dir)
    m = record["metrics"]
    reporter(progress)(f"distill: {m['epochs_run']} epochs run, best epoch {m['best_epoch']}")
    with_record(model, record, previous=module)
    return StepResult(model, record, history)


def train_distill(student, teacher, data, config: DistillConfig, val=None, progress: bool = True,
                  checkpoint_dir=None, metric: str | None = None):
    """The training loop, in this process: single-process, or one rank of a torchrun job.

    Batches come from ``DistributedSampler`` (one replica when not distributed), so the sample
    order of epoch ``e`` is the same permutation whatever the process count; each rank takes
    ``batch_size / world`` samples of every global batch. Random state is re-seeded from
    ``(seed, epoch)`` at each epoch start, which makes a resumed run continue exactly.
    ``metric``: what the labels are scored by (``top1``, ``mse``, ``mae``, ``cosine``); default
    ``data_metric(data)``. Returns ``(model, record)``.
    """
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.utils.data.distributed import DistributedSampler
    from tqdm.auto import tqdm

    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    metric = metric or data_metric(data)
    train_x, train_y, batches = _training_data(data)
    if val is None and hasattr(data, "val"):
        val = data.val
    val_xy = _xy(val) if val is not None else None
    if val_xy is not None and val_xy[1] is None:
        val_xy = None  # nothing to score a validation split without labels on
    if world > 1:
        check_split(config, len(train_x) if batches is None else None, world)

    torch.manual_seed(config.seed)
    model = copy.deepcopy(student).train()
    teacher = copy.deepcopy(teacher).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    probe = _first_batch(train_x, batches)
    check = copy.deepcopy(model).eval()
    refuse_exported(check, "distill", probe)  # a .pt2 program's graph may fix the batch size
    with torch.no_grad():
        s_out, t_out = check(probe), teacher(probe)
    if s_out.shape != t_out.shape:
        raise InputError(f"teacher and student outputs differ: teacher {tuple(t_out.shape)}, "
                         f"student {tuple(s_out.shape)}; distillation needs the same output shape")
    if metric is None:  # no labels: soft targets only, class scores or values by the outputs' shape
        metric = "top1" if t_out.ndim == 2 else "mse"
    classify = metric == "top1"
    hard_loss = _hard_loss(metric)
    targets = train_y if batches is None else batches[0][1]
    if targets is not None and not classify and targets[:1].numel() != t_out[:1].numel():
        raise InputError(f"{metric} targets of shape {tuple(targets.shape[1:])} per sample for outputs of "
                         f"shape {tuple(t_out.shape[1:])}; a regression target needs one value per output")

    feats = _FeatureTaps(model, teacher, config.features) if config.features else None
    params = list(model.parameters())
    if feats is not None:
        with torch.no_grad():
            model.eval()
            model(probe)
            teacher(probe)
            model.train()
        params += feats.build_adapters()
    opt = torch.optim.AdamW(params, lr=config.lr or 1e-3, weight_decay=config.weight_decay)
    steps_per_epoch = (len(train_x) + config.batch_size - 1) // config.batch_size if batches is None \
        else len(batches)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, config.epochs * steps_per_epoch))
    T, alpha = float(config.temperature), float(config.alpha)
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model)  # averages gradients over the ranks' shards
    teacher_logits = None
    if config.precompute_teacher and batches is None:
        teacher_logits = _teacher_logits(teacher, train_x, rank, world)

    state = {"epoch": 0, "history": [], "best_acc": None, "best_state": None, "best_epoch": 0, "stale": 0}
    ckpt = Checkpoint(checkpoint_dir, config) if checkpoint_dir is not None else None
    if ckpt is not None and ckpt.exists():
        saved = ckpt.load()
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        state = saved["state"]
    sampler = None
    if batches is None:
        sampler = DistributedSampler(range(len(train_x)), num_replicas=world, rank=rank, shuffle=True,
                                     seed=config.seed, drop_last=False)
    per_rank = config.batch_size // world

    bar = tqdm(total=config.epochs * steps_per_epoch, initial=state["epoch"] * steps_per_epoch, desc="distill",
               disable=not progress or rank != 0, leave=False, mininterval=0.5)
    done = state["stale"] >= (config.patience or 10**9) and val_xy is not None
    for epoch in range(state["epoch"], config.epochs):
        if done:
            break
        torch.manual_seed(config.seed * 100003 + epoch)  # dropout etc.: the same after a resume
        model.train()
        total, count = 0.0, 0
        for xb, yb, tb in _epoch_batches(train_x, train_y, batches, sampler, epoch, per_rank, config,
                                         teacher_logits):
            logits = net(xb)
            if tb is None:
                with torch.no_grad():
                    tb = teacher(xb)
            loss = logits.new_zeros(())
            if alpha > 0 or yb is None:
                a = 1.0 if yb is None else alpha
                if classify:
                    loss = loss + a * T * T * F.kl_div(F.log_softmax(logits / T, dim=-1),
                                                       F.softmax(tb / T, dim=-1), reduction="batchmean")
                else:  # regression: the teacher's outputs are the soft targets
                    loss = loss + a * F.mse_loss(logits, tb)
            if yb is not None and alpha < 1:
                loss = loss + (1 - alpha) * hard_loss(logits, yb)
            if feats is not None:
                loss = loss + config.feature_weight * feats.loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, count = total + loss.item() * len(xb), count + len(xb)
            bar.update(1)
        entry = {"epoch": epoch + 1, "train_loss": total / max(count, 1)}
        if val_xy is not None:
            # Every rank holds the same weights, so every rank reaches the same decision.
            value = _val_score(model, *val_xy, metric)
            entry[f"val_{metric}"] = value
            bar.set_postfix(val=f"{value * 100:.2f}%" if classify else f"{value:.4g}", refresh=False)
            # best_acc holds the score with higher better (a lower error is a higher -error)
            score = value if METRIC_HIGHER_IS_BETTER[metric] else -value
            if state["best_acc"] is None or score > state["best_acc"]:
                state.update(best_acc=score, best_epoch=epoch + 1, stale=0,
                             best_state=copy.deepcopy(model.state_dict()))
            else:
                state["stale"] += 1
        state["history"].append(entry)
        state["epoch"] = epoch + 1
        if ckpt is not None and rank == 0:
            ckpt.save(model, opt, sched, state)
        if config.patience is not None and val_xy is not None and state["stale"] >= config.patience:
            break
    bar.close()
    if feats is not None:
        feats.remove()
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    model.eval()
    history, best = state["history"], state["best_acc"]
    if best is not None and best < 0 and classify:
        best = None  # a checkpoint written before validation scores were optional (-1: none yet)
    best_val = None if best is None else best if METRIC_HIGHER_IS_BETTER[metric] else -best
    record = {"name": "distill", "config": {**asdict(config), "features": [list(p) for p in config.features]},
              "metrics": {"epochs_run": len(history), "best_epoch": state["best_epoch"] or len(history),
                          "loss": LOSS_NAMES[metric], "val_metric": metric, "best_val": best_val,
                          "best_val_top1": best_val if classify else None,
                          "params": count_params(model), "processes": world, "history": history}}
    return model, record


def check_split(config: DistillConfig, n_train: int | None, nproc: int) -> None:
    """Raise ``InputError`` when ``nproc`` processes cannot share the data and the global batch."""
    if n_train is None:
        raise InputError("distillation over several processes needs array data (a task, a split or "
                         "(x, y) arrays), not a loader of batches")
    if nproc > n_train:
        raise InputError(f"nproc {nproc} is larger than the {n_train} training samples: each process "
                         f"needs at least one")
    if config.batch_size % nproc:
        raise InputError(f"batch_size {config.batch_size} does not split evenly over {nproc} processes; "
                         f"use a batch size that is a multiple of nproc")
    if config.features:
        raise InputError("feature matching is single-process only; drop features or use nproc 1")


#: A distributed run that takes longer than this is stopped (seconds).
TIMEOUT_S = 6 * 3600


def _launch(student, teacher, data, config, val, nproc: int, checkpoint_dir, progress: bool):
    """Run ``train_distill`` on ``nproc`` processes under torchrun; return ``(model, record)``."""
    import torch

    train_x, train_y, batches = _training_data(data)
    check_split(config, len(train_x) if batches is None else None, nproc)
    if val is None and hasattr(data, "val"):
        val = data.val
    val_xy = _xy(val) if val is not None else None
    with tempfile.TemporaryDirectory(prefix="edgeopt-distill-") as tmp:
        job = Path(tmp) / "job.pt"
        # the metric travels with the arrays: float targets alone cannot say mae or cosine
        torch.save({"student": student, "teacher": teacher, "train": (train_x, train_y), "val": val_xy,
                    "metric": data_metric(data),
                    "config": asdict(config), "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
                    "progress": progress, "result": str(Path(tmp) / "result.pt")}, job)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "edgeopt.compress.distributed", str(job)]
        # One compute thread per worker unless told otherwise: N workers share the machine's cores.
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))}
        r = subprocess.run(cmd, stdout=None if progress else subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True, env=env, timeout=TIMEOUT_S)
        if r.returncode != 0:
            lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
            errors = [ln for ln in lines if "InputError" in ln]
            if errors:
                raise InputError(errors[-1].split("InputError:", 1)[-1].strip())
            raise RuntimeError(f"distributed distillation failed (torchrun exit {r.returncode}):\n"
                               + "\n".join(lines[-15:]))
        result = torch.load(Path(tmp) / "result.pt", map_location="cpu", weights_only=False)
    model = copy.deepcopy(student)
    model.load_state_dict(result["state"])
    model.eval()
    return model, result["record"]


#: Whether a higher value of a metric the labels are scored by is better.
METRIC_HIGHER_IS_BETTER = {"top1": True, "cosine": True, "mse": False, "mae": False}
#: The hard-label loss each metric trains with.
LOSS_NAMES = {"top1": "cross_entropy", "mse": "mse", "mae": "mae", "cosine": "cosine"}


def data_metric(data) -> str | None:
    """What the labels of distillation data are scored by: a task's ``metric`` (``None`` for an
    unlabelled ``agreement`` task), else ``top1`` for integer labels, ``mse`` for float targets,
    ``None`` without labels."""
    if hasattr(data, "metric") and hasattr(data, "train"):
        if data.metric == "agreement" or getattr(data.train, "y", None) is None:
            return None
        if data.metric not in METRIC_HIGHER_IS_BETTER:
            raise InputError(f"distill cannot train on a {data.metric!r} task; expected one of "
                             f"{', '.join(METRIC_HIGHER_IS_BETTER)}")
        return data.metric
    if hasattr(data, "train"):
        data = data.train
    if hasattr(data, "x"):
        y = getattr(data, "y", None)
    elif isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (tuple, list)):
        y = data[1]
    else:  # batches: the first one's labels
        try:
            first = next(iter(data))
        except (TypeError, StopIteration):
            return None
        y = first[1] if isinstance(first, (tuple, list)) and len(first) == 2 else None
    if y is None:
        return None
    return "top1" if _is_integer(y) else "mse"


def _is_integer(y) -> bool:
    import torch

    if isinstance(y, torch.Tensor):
        return not (y.is_floating_point() or y.is_complex())
    return np.issubdtype(np.asarray(y).dtype, np.integer)


def _hard_loss(metric: str):
    """The loss of outputs against labels for ``metric``: cross-entropy for class labels, the
    task's error for regression, 1 - cosine similarity for embeddings."""
    import torch.nn.functional as F

    if metric == "top1":
        return F.cross_entropy
    if metric == "mse":
        return lambda out, y: F.mse_loss(out, y.reshape(out.shape))
    if metric == "mae":
        return lambda out, y: F.l1_loss(out, y.reshape(out.shape))
    return lambda out, y: (1 - F.cosine_similarity(out.reshape(len(out), -1), y.reshape(len(y), -1),
                                                   dim=1)).mean()


def _teacher_logits(teacher, x, rank: int, world: int):
    """Teacher logits for every training sample, computed once: each rank does 1/world of the
    rows and an all-gather shares them, so the teacher's cost is split over the processes."""
    import torch
    import torch.distributed as dist

    n = len(x)
    per = (n + world - 1) // world
    lo, hi = min(n, rank * per), min(n, (rank + 1) * per)
    with torch.no_grad():
        mine = torch.cat([teacher(x[s:min(s + 256, hi)]) for s in range(lo, hi, 256)]) if hi > lo else None
        width = teacher(x[:1]).shape[1:]
        chunk = torch.zeros((per, *width))
        if mine is not None:
            chunk[:len(mine)] = mine
    if world == 1:
        return chunk[:n]
    parts = [torch.zeros_like(chunk) for _ in range(world)]
    dist.all_gather(parts, chunk)
    return torch.cat(parts)[:n]


class Checkpoint:
    """One file, ``distill.ckpt``, replaced atomically after every epoch. A checkpoint records the
    config it was made with; resuming with another config is refused."""

    def __init__(self, folder, config: DistillConfig):
        self.folder = Path(folder)
        self.path = self.folder / "distill.ckpt"
        self.fingerprint = json.dumps(asdict(config), sort_keys=True, default=str)

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict:
        import torch

        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise InputError(f"checkpoint {str(self.path)!r} cannot be read ({type(e).__name__}); "
                             "delete it to start over") from None
        if saved.get("config") != self.fingerprint:
            raise InputError(f"checkpoint {str(self.path)!r} was made with another DistillConfig; "
                             "use a new checkpoint folder or the same config")
        return saved

    def save(self, model, opt, sched, state: dict) -> None:
        import torch

        self.folder.mkdir(parents=True, exist_ok=True)
        from edgeopt.core.files import atomic_file

        with atomic_file(self.path) as tmp:
            torch.save({"config": self.fingerprint, "model": model.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "state": state}, tmp)


# -- data -------------------------------------------------------------------------------------

def _xy(split):
    import torch

    if hasattr(split, "x"):
        x, y = split.x, getattr(split, "y", None)
    elif isinstance(split, (tuple, list)) and len(split) == 2:
        x, y = split
    else:
        raise InputError(f"expected a split with .x/.y or an (x, y) pair, got {type(split).__name__}")
    x = torch.as_tensor(np.asarray(x))
    y = _targets(y) if y is not None else None
    if len(x) == 0:
        raise InputError("distillation data is empty: expected at least one sample")
    if y is not None and len(y) != len(x):
        raise InputError(f"{len(x)} inputs but {len(y)} labels")
    return x, y


def _targets(y):
    """Labels as a tensor: int64 class indices, or float32 regression targets."""
    import torch

    y = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    return y.long() if _is_integer(y) else y.float()


def _training_data(data):
    """(x, y, None) for array data, or (None, None, list of batches) for an iterable of batches."""
    import torch

    if hasattr(data, "train"):
        data = data.train
    if hasattr(data, "x") or (isinstance(data, tuple) and len(data) == 2
                              and not isinstance(data[0], (tuple, list))):
        x, y = _xy(data)
        return x, y, None
    try:
        batches = [(torch.as_tensor(np.asarray(b[0])), _targets(b[1])) for b in data]
    except TypeError:
        raise InputError(f"distillation data must be a task, a split, (x, y) arrays or an iterable "
                         f"of (x, y) batches; got {type(data).__name__}") from None
    if not batches:
        raise InputError("distillation data is empty: the loader yielded no batch")
    return None, None, batches


def _first_batch(x, batches):
    return x[:2] if batches is None else batches[0][0][:2]


def _epoch_batches(x, y, batches, sampler, epoch: int, per_rank: int, config: DistillConfig, teacher_logits):
    """This rank's ``(x, y, teacher logits or None)`` batches of one epoch."""
    import torch

    from .augment import shift_by

    if batches is not None:
        for xb, yb in batches:
            yield xb, yb, None
        return
    sampler.set_epoch(epoch)
    order = torch.tensor(list(sampler))
    offsets = None
    if config.shift:
        # Per-sample offsets drawn for the whole epoch: the same whatever the process count.
        g = torch.Generator().manual_seed(config.seed * 100003 + epoch)
        offsets = torch.randint(0, 2 * config.shift + 1, (len(x), 2), generator=g)
    for s in range(0, len(order), per_rank):
        i = order[s:s + per_rank]
        xb = x[i] if offsets is None else shift_by(x[i], config.shift, offsets[i, 0], offsets[i, 1])
        yield xb, (y[i] if y is not None else None), (teacher_logits[i] if teacher_logits is not None else None)


def _val_score(model, x, y, metric: str) -> float:
    """The validation split's ``metric``: top-1 accuracy, mse, mae or mean cosine similarity."""
    import torch
    import torch.nn.functional as F

    from edgeopt.runtimes.torch_runner import torch_outputs

    model.eval()
    out = torch.from_numpy(torch_outputs(model, x.numpy())[0])
    model.train()
    if metric == "top1":
        return float((out.argmax(-1) == y).float().mean())
    out, y = out.reshape(len(out), -1).double(), y.reshape(len(y), -1).double()
    if metric == "mse":
        return float(F.mse_loss(out, y))
    if metric == "mae":
        return float(F.l1_loss(out, y))
    return float(F.cosine_similarity(out, y, dim=1).mean())


class _FeatureTaps:
    """Forward hooks capturing named student/teacher activations, with width adapters."""

    def __init__(self, student, teacher, pairs):
        self.pairs = [tuple(p) for p in pairs]
        self.out: dict = {}
        self.hooks = []
        self.adapters = []
        s_mods, t_mods = dict(student.named_modules()), dict(teacher.named_modules())
        for i, (s_name, t_name) in enumerate(self.pairs):
            if s_name not in s_mods:
                raise InputError(f"feature pair {i}: the student has no module {s_name!r}")
            if t_name not in t_mods:
                raise InputError(f"feature pair {i}: the teacher has no module {t_name!r}")
            self.hooks.append(s_mods[s_name].register_forward_hook(self._tap(("s", i))))
            self.hooks.append(t_mods[t_name].register_forward_hook(self._tap(("t", i))))

    def _tap(self, key):
        def hook(module, inputs, output):
            self.out[key] = output
        return hook

    def build_adapters(self) -> list:
        import torch

        params = []
        for i in range(len(self.pairs)):
            s, t = self.out[("s", i)], self.out[("t", i)]
            if s.shape[2:] != t.shape[2:] or s.ndim != t.ndim:
                raise InputError(f"feature pair {self.pairs[i]}: shapes {tuple(s.shape)} and "
                                 f"{tuple(t.shape)} differ beyond the channel axis")
            if s.shape[1] == t.shape[1]:
                adapter = torch.nn.Identity()
            elif s.ndim == 4:
                adapter = torch.nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False)
            else:
                adapter = torch.nn.Linear(s.shape[-1], t.shape[-1], bias=False)
            self.adapters.append(adapter)
            params += list(adapter.parameters())
        return params

    def loss(self):
        import torch.nn.functional as F

        return sum(F.mse_loss(a(self.out[("s", i)]), self.out[("t", i)].detach())
                   for i, a in enumerate(self.adapters))

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def describe(metrics: dict, config: dict) -> list[str]:
    """What a distill record says, as the report says it (epochs, the best validation score).

    >>> describe({"epochs_run": 3, "best_epoch": 2, "best_val_top1": 0.9}, {})
    ['3 epochs (best 2)', 'best val top-1 90.00%']
    """
    best = (("best_val_top1", lambda a: f"best val top-1 {a * 100:.2f}%") if metrics.get("best_val_top1") is not None
            # a regression or embedding task: its own metric
            else ("best_val", lambda v: f"best val {metrics.get('val_metric')} {v:.4g}"))
    return said(metrics, ("epochs_run", lambda n: f"{n} epochs (best {metrics.get('best_epoch')})"), best,
                ("params", lambda n: f"params {count(n)}"))
