"""MetaSchedule tuning with a persisted, reusable, resumable JSON database.

The database lives in a folder per (model structure, target): the key hashes the structure of
the model's kernels (not its weights, so a fine-tuned or compressed copy of the same
architecture reuses it) and the target. Tuning runs in rounds until the trial budget or the
wall-clock budget is spent; MetaSchedule appends every measured candidate to the database as it
goes, so an interrupted tuning (Ctrl-C) keeps what it measured and the next build continues from
there. A build whose database already holds the budget's trials does no tuning at all.

Example:
    >>> import edgeopt.compile as eoc  # doctest: +SKIP
    >>> art = eoc.build("build/resnet18.onnx", target="cpu", out="build/r18-tuned",
    ...                 tune=eoc.TuneConfig(trials=512, timeout_s=1800))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgeopt.runtimes.errors import InputError

COST_MODELS = ("xgb", "random")


@dataclass(frozen=True)
class TuneConfig:
    """Tuning budget and where the database lives.

    Args:
        trials: total measured candidates wanted in the database for this model and target.
        timeout_s: stop starting new rounds after this many seconds (what was measured is kept).
        db: database folder; default ``~/.cache/edgeopt/tuning/<structure>-<target>``.
        max_trials_per_task: cap per kernel (default: an even share of ``trials``, at least 8).
        trials_per_round: candidates per round at least (a round is also large enough to give
            every task ``trials_per_iter`` candidates, so a wall-clock stop never leaves kernels
            untuned); larger rounds amortize worker start-up.
        trials_per_iter: candidates a task measures per search iteration.
        cost_model: "xgb" (learned, the default) or "random".
    """

    trials: int
    timeout_s: float | None = None
    db: str | None = None
    max_trials_per_task: int | None = None
    trials_per_round: int = 64
    trials_per_iter: int = 8
    cost_model: str = "xgb"

    def __post_init__(self):
        if not isinstance(self.trials, int) or self.trials < 0:
            raise InputError(f"trials must be an integer >= 0, got {self.trials!r}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise InputError(f"timeout_s must be > 0, got {self.timeout_s!r}")
        if not isinstance(self.trials_per_round, int) or self.trials_per_round < 1:
            raise InputError(f"trials_per_round must be an integer >= 1, got {self.trials_per_round!r}")
        if not isinstance(self.trials_per_iter, int) or self.trials_per_iter < 1:
            raise InputError(f"trials_per_iter must be an integer >= 1, got {self.trials_per_iter!r}")
        if self.cost_model not in COST_MODELS:
            raise InputError(f"cost_model must be one of {', '.join(COST_MODELS)}, got {self.cost_model!r}")


def structure_key(mod, spec: dict) -> str:
    """A key for (kernel structure, target): the same architecture on the same target shares it."""
    import tvm
    import tvm_ffi

    kernels = sorted(str(tvm_ffi.structural_hash(f)) for _, f in mod.functions_items()
                     if isinstance(f, tvm.tirx.PrimFunc))
    digest = hashlib.sha256(json.dumps([kernels, spec], sort_keys=True).encode()).hexdigest()
    return digest[:20]


def default_db_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgeopt" / "tuning"


def records_in(db: Path) -> int:
    """Measured candidates stored in a database folder (one JSON line each)."""
    f = db / "database_tuning_record.json"
    if not f.exists():
        return 0
    with open(f) as fh:
        return sum(1 for line in fh if line.strip())


def tune(mod, spec: dict, config: TuneConfig, log: Callable[[str], None] = lambda s: None) -> tuple[Path, dict]:
    """Tune ``mod`` (after the zero pipeline, inside the target scope) into its database.

    Returns the database folder and a summary: trials before/after, rounds, seconds, tasks.
    """
    import tvm
    from tvm.s_tir import meta_schedule as ms

    db = Path(config.db) if config.db else default_db_root() / f"{structure_key(mod, spec)}"
    db.mkdir(parents=True, exist_ok=True)
    target = tvm.target.Target(spec)
    before = records_in(db)
    tasks = ms.relax_integration.extract_tasks(mod, target)
    per_task = config.max_trials_per_task or max(8, config.trials // max(1, len(tasks)))
    t0 = time.perf_counter()
    rounds = 0
    done = before
    # MetaSchedule's own logging is very chatty at INFO; progress is reported per round instead.
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    while done < config.trials:
        if config.timeout_s is not None and time.perf_counter() - t0 >= config.timeout_s:
            log(f"tuning: wall-clock budget of {config.timeout_s:.0f} s spent")
            break
        round_size = max(config.trials_per_round, config.trials_per_iter * len(tasks))
        step = min(round_size, config.trials - done)
        log(f"tuning: round {rounds + 1}, {done}/{config.trials} trials in {db} "
            f"({len(tasks)} tasks, {time.perf_counter() - t0:.0f} s)")
        ms.relax_integration.tune_relax(
            mod=mod, params={}, target=target, work_dir=str(db), max_trials_global=step,
            max_trials_per_task=per_task, num_trials_per_iter=config.trials_per_iter,
            cost_model=config.cost_model)
        rounds += 1
        new = records_in(db)
        if new == done:  # every task reached its cap: nothing more to measure
            break
        done = new
    summary = {"db": str(db), "trials_before": before, "trials_after": records_in(db),
               "rounds": rounds, "seconds": round(time.perf_counter() - t0, 1), "tasks": len(tasks)}
    return db, summary
