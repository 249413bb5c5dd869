"""Knowledge distillation: train a student on a teacher's softened outputs plus the labels.

Loss = ``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student,
labels)`` (Hinton et al. 2015), plus optional intermediate feature matching (MSE between named
student and teacher modules' outputs, through a learned 1x1 adapter when their widths differ).
Seeded and deterministic, with a progress bar and early stopping on a validation split (the best
epoch's weights are kept). ``alpha=0`` is plain fine-tuning on hard labels, the baseline that
distillation is measured against. The student can be a compressed copy of the teacher (the
recovery step after lowrank or pruning) or a different, smaller architecture trained from scratch.

Example:
    >>> import edgeopt.compress as ec  # doctest: +SKIP
    >>> from edgeopt.pipeline.tasks import load_task  # doctest: +SKIP
    >>> task = load_task("digits")  # doctest: +SKIP
    >>> student = ec.distill(pruned, teacher=model, data=task, config=ec.DistillConfig(epochs=5))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgeopt.runtimes.errors import InputError

from .augment import random_shift
from .counting import count_params
from .history import with_record


@dataclass(frozen=True)
class DistillConfig:
    """Distillation settings.

    Args:
        epochs: maximum training epochs (>= 1).
        temperature: softmax temperature T (> 0).
        alpha: weight of the distillation term, in [0, 1]; 0 = fine-tuning on labels only.
        lr: AdamW learning rate (default 1e-3), cosine-decayed over the run.
        batch_size: samples per step.
        weight_decay: AdamW weight decay.
        patience: stop after this many epochs without a better validation top-1 (None: never).
        features: (student module, teacher module) name pairs whose outputs are matched.
        feature_weight: weight of the feature-matching term.
        shift: random translation augmentation in pixels for image inputs (0: off).
        seed: seeds initialisation of adapters, shuffling and augmentation.
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

    def __post_init__(self):
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
        for pair in self.features:
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise InputError(f"features must be (student module, teacher module) pairs, got {pair!r}")


def distill(student, teacher, data: Any, config: DistillConfig, val: Any = None, progress: bool = True):
    """Train a copy of ``student`` against ``teacher``; return it (best validation epoch).

    Args:
        student: the model to train (not modified; a trained copy is returned).
        teacher: the reference model (kept frozen, eval mode).
        data: a task (with ``.train`` and ``.val`` splits), a split or ``(x, y)`` arrays, or an
            iterable of ``(x, y)`` batches.
        config: ``DistillConfig``.
        val: validation data (split or ``(x, y)``) for early stopping; default the task's.
        progress: show a progress bar.
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    train_x, train_y, batches = _training_data(data)
    if val is None and hasattr(data, "val"):
        val = data.val
    val_xy = _xy(val) if val is not None else None

    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model = copy.deepcopy(student).train()
    teacher = copy.deepcopy(teacher).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    probe = _first_batch(train_x, batches)
    with torch.no_grad():
        s_out, t_out = copy.deepcopy(model).eval()(probe), teacher(probe)
    if s_out.shape != t_out.shape:
        raise InputError(f"teacher and student outputs differ: teacher {tuple(t_out.shape)}, "
                         f"student {tuple(s_out.shape)}; distillation needs the same output shape")

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

    history, best_acc, best_state, best_epoch, stale = [], -1.0, None, 0, 0
    bar = tqdm(total=config.epochs * steps_per_epoch, desc="distill", disable=not progress,
               leave=False, mininterval=0.5)
    for epoch in range(config.epochs):
        model.train()
        total, count = 0.0, 0
        for xb, yb in _epoch_batches(train_x, train_y, batches, config.batch_size, gen):
            xb = random_shift(xb, config.shift, gen)
            logits = model(xb)
            with torch.no_grad():
                t_logits = teacher(xb)
            loss = logits.new_zeros(())
            if alpha > 0 or yb is None:
                a = 1.0 if yb is None else alpha
                loss = loss + a * T * T * F.kl_div(F.log_softmax(logits / T, dim=-1),
                                                   F.softmax(t_logits / T, dim=-1), reduction="batchmean")
            if yb is not None and alpha < 1:
                loss = loss + (1 - alpha) * F.cross_entropy(logits, yb)
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
            entry["val_top1"] = _top1(model, *val_xy)
            bar.set_postfix(val=f"{entry['val_top1'] * 100:.2f}%", refresh=False)
            if entry["val_top1"] > best_acc:
                best_acc, best_epoch, stale = entry["val_top1"], epoch + 1, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
        history.append(entry)
        if config.patience is not None and val_xy is not None and stale >= config.patience:
            break
    bar.close()
    if feats is not None:
        feats.remove()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    record = {"name": "distill", "config": {**asdict(config), "features": [list(p) for p in config.features]},
              "metrics": {"epochs_run": len(history), "best_epoch": best_epoch or len(history),
                          "best_val_top1": best_acc if best_acc >= 0 else None,
                          "params": count_params(model), "history": history}}
    return with_record(model, record, previous=student)


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
    y = torch.as_tensor(np.asarray(y)).long() if y is not None else None
    if len(x) == 0:
        raise InputError("distillation data is empty: expected at least one sample")
    if y is not None and len(y) != len(x):
        raise InputError(f"{len(x)} inputs but {len(y)} labels")
    return x, y


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
        batches = [(torch.as_tensor(np.asarray(b[0])), torch.as_tensor(np.asarray(b[1])).long())
                   for b in data]
    except TypeError:
        raise InputError(f"distillation data must be a task, a split, (x, y) arrays or an iterable "
                         f"of (x, y) batches; got {type(data).__name__}") from None
    if not batches:
        raise InputError("distillation data is empty: the loader yielded no batch")
    return None, None, batches


def _first_batch(x, batches):
    return x[:2] if batches is None else batches[0][0][:2]


def _epoch_batches(x, y, batches, batch_size: int, gen):
    import torch

    if batches is not None:
        yield from batches
        return
    order = torch.randperm(len(x), generator=gen)
    for s in range(0, len(x), batch_size):
        i = order[s:s + batch_size]
        yield x[i], (y[i] if y is not None else None)


def _top1(model, x, y) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[s:s + 256]).argmax(-1) for s in range(0, len(x), 256)])
    model.train()
    return float((pred == y).float().mean())


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
