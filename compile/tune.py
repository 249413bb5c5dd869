"""MetaSchedule tuning with a persisted, reusable, resumable JSON database.

The database lives in a folder per (model structure, target): the key hashes the structure of
the model's kernels (not its weights, so a fine-tuned or compressed copy of the same
architecture reuses it) and the target. Tuning runs in rounds until the trial budget or the
wall-clock budget is spent. A round cannot be stopped half-way from outside, so rounds are sized to
what is left of the budget (``RoundBudget``), and one still running at the deadline ends at its
next measured batch, its workers ended (``stop_at_deadline``, ``workers_ended_at``): the budget
holds from the start of ``tune`` to its return, the database checks and design spaces included;
the build's compile after it is not counted. An interrupted tuning (Ctrl-C, a killed job) keeps
every finished round: the next build continues from there.
A build whose database already holds the budget's trials does no tuning at all. Trials go
where the model's time is: the first round reaches every kernel, later ones only the kernels
that hold most of the measured time (``round_tasks``).

Example:
    >>> import edgeopt.compile as eoc  # doctest: +SKIP
    >>> tune = eoc.TuneConfig(trials=512, timeout_s=1800)  # doctest: +SKIP
    >>> r = eoc.build("build/resnet18.onnx", eoc.BuildConfig(target="cpu", tune=tune),
    ...               out="build/r18-tuned")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgeopt.core.config import StepConfig
from edgeopt.core.errors import CheckFailed, InputError, last_line
from edgeopt.core.result import Progress, reporter

from .intrinsics import load_tensor_intrinsics

COST_MODELS = ("xgb", "random")
#: Before any round has been timed, a round is predicted at ``FIRST_ROUND_S_PER_ITER`` seconds
#: per search iteration (a task's design space, the evolutionary search: ~8 s for a convolution
#: on a 2-core CPU) plus ``FIRST_ROUND_S_PER_TRIAL`` per measured candidate (build and
#: measurement): ResNet-18's convolutions take ~24 s per iteration of 16 candidates.
FIRST_ROUND_S_PER_ITER = 8.0
FIRST_ROUND_S_PER_TRIAL = 1.0


class DeadlineReached(Exception):
    """A tuning round's wall-clock deadline passed: the round ends with what it measured."""


DEADLINE_REACHED = "edgeopt: the tuning round's wall-clock deadline passed"


def stop_at_deadline(deadline: float, clock: Callable[[], float] = time.perf_counter):
    """MetaSchedule measure callbacks for a round that ends by ``deadline`` (a ``clock`` value):
    TVM's default ones (records into the database, the cost model updated), then one that ends
    the round once a measured batch comes back after the deadline. MetaSchedule
    keeps each batch's records as it comes back, so the round keeps what it measured; what a
    deadline cannot cut is the batch in flight (one search iteration of one task)."""
    from tvm.s_tir.meta_schedule.measure_callback import MeasureCallback, PyMeasureCallback
    from tvm.ir.utils import derived_object

    @derived_object
    class StopAtDeadline(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            if clock() >= deadline:
                # through TVM's C++ the exception comes back as a RuntimeError with this message
                raise DeadlineReached(DEADLINE_REACHED)

    # after the records are stored and the batch's files removed, before the cost model's
    # update (seconds of XGBoost training that a round about to end has no use for)
    default = MeasureCallback.create("default")
    return [*default[:-1], StopAtDeadline(), default[-1]]


def end_pool_workers() -> None:
    """Kill this process's TVM pool workers (``tvm.exec.popen_worker``: MetaSchedule's builders
    and runners). Only those: a device farm's RPC servers may be children of this process too."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "tvm.exec.popen_worker" in child.cmdline():
                child.kill()


@contextlib.contextmanager
def workers_ended_at(deadline: float, clock: Callable[[], float] = time.perf_counter):
    """End this process's builder and runner workers (TVM's ``popen_worker`` processes) once
    ``deadline`` passes: the batch they were building or measuring comes back failed at once, and
    ``stop_at_deadline`` ends the round (a batch of slow candidates, or workers still starting on
    a loaded machine, took minutes). Until the round has ended, as the pool starts new ones."""
    import threading

    end_workers = end_pool_workers

    if deadline == float("inf"):
        yield
        return
    done = threading.Event()

    def watch() -> None:
        # again and again: the pool restarts a dead worker for the batch's next candidate
        if done.wait(max(0.0, deadline - clock())):
            return
        while not done.is_set():
            end_workers()
            done.wait(0.5)

    watcher = threading.Thread(target=watch, name="edgeopt-tuning-deadline", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def search_strategy(population: int, whole_space: int | None = None):
    """MetaSchedule's evolutionary search; for a hand-written space of ``whole_space`` schedules,
    one that asks for no more than there are. With its defaults (512 samples, at least 50 not yet
    measured, 4 genetic iterations) it kept sampling a space of 4 schedules for minutes on a
    loaded 2-core machine before measuring any, a wait no deadline can cut."""
    from tvm.s_tir import meta_schedule as ms

    if whole_space is None:
        return ms.search_strategy.EvolutionarySearch(population_size=population)
    return ms.search_strategy.EvolutionarySearch(
        population_size=max(whole_space, 2), init_min_unmeasured=whole_space, max_fail_count=1,
        genetic_num_iters=1, genetic_max_fail_count=1)


class RoundBudget:
    """Sizes tuning rounds to what is left of a wall-clock budget.

    MetaSchedule cannot stop a round half-way and keeps its records only when the round ends, so
    the budget is kept by never starting a round that does not fit: a round is predicted as
    ``iterations x FIRST_ROUND_S_PER_ITER + trials x FIRST_ROUND_S_PER_TRIAL`` seconds, scaled by
    how the rounds so far compared to their prediction (everything a round costs: worker start,
    design spaces, search, measuring, the database check after it). Until one round has been
    timed the guess may be far off, so a first round is planned into half of what is left.

    >>> b = RoundBudget(timeout_s=100.0, started=0.0, clock=lambda: 10.0)
    >>> b.iterations_affordable(trials_per_iter=16)   # 45 s of the 90 left, at 24 s an iteration
    1
    >>> b.record(iterations=1, trials=16, seconds=48.0)  # twice the prediction: now 48 s each
    >>> b.clock = lambda: 58.0; b.iterations_affordable(trials_per_iter=16)
    0
    """

    def __init__(self, timeout_s: float | None, started: float, clock: Callable[[], float] = time.perf_counter):
        self.timeout_s = timeout_s
        self.started = started
        self.clock = clock
        self.predicted_s = 0.0  # the unscaled predictions of the rounds timed so far
        self.actual_s = 0.0

    def left(self) -> float:
        return float("inf") if self.timeout_s is None else self.timeout_s - (self.clock() - self.started)

    def scale(self) -> float:
        return self.actual_s / self.predicted_s if self.predicted_s > 0 else 1.0

    def predict(self, iterations: int, trials: int) -> float:
        return self.scale() * (iterations * FIRST_ROUND_S_PER_ITER + trials * FIRST_ROUND_S_PER_TRIAL)

    def iterations_affordable(self, trials_per_iter: int) -> int:
        """Search iterations of ``trials_per_iter`` candidates that fit in what is left."""
        if self.timeout_s is None:
            return 1 << 30
        room = self.left() * (1.0 if self.predicted_s > 0 else 0.5)
        one = self.predict(1, trials_per_iter)
        return max(0, int(room // one)) if room > 0 else 0

    def record(self, iterations: int, trials: int, seconds: float) -> None:
        self.predicted_s += iterations * FIRST_ROUND_S_PER_ITER + trials * FIRST_ROUND_S_PER_TRIAL
        self.actual_s += seconds


@dataclass(frozen=True)
class TuneConfig(StepConfig):
    """Tuning budget and where the database lives.

    Args:
        trials: total measured candidates wanted in the database for this model and target
            (0: build with what the database already holds).
        timeout_s: wall-clock seconds for tuning, from its start to its return (what was
            measured is kept); the build's compile after it is not counted.
        db: database folder; default ``~/.cache/edgeopt/tuning/<structure>-<target>``.
        max_trials_per_task: cap per kernel and round (default: an even share of ``trials``, at
            least 8; after the first round the kernels that hold most of the time share the
            whole budget, see ``round_tasks``).
        trials_per_round: candidates per round at least (a round is also large enough to give
            every task ``trials_per_iter`` candidates, so a wall-clock stop never leaves kernels
            untuned); larger rounds amortize worker start-up.
        trials_per_iter: candidates a task measures per search iteration.
        cost_model: "xgb" (learned, the default) or "random".
        population: candidates the evolutionary search breeds per iteration (TVM's default,
            512). A search iteration costs ~20 s for a convolution on 2 cores, whatever the
            number of candidates it then hands out, so ``trials_per_iter`` of 16-32 amortizes it.
        build_timeout_s: seconds one candidate may take to compile in a builder worker.
        tracker, key: measure candidates on the devices registered under ``key`` at this TVM
            RPC tracker (``HOST:PORT``) instead of on the host; builds stay on the host. The database
            is the same as for local tuning.
        weight_prepack: on CPU, let schedules choose the weights' memory layout; the layout
            change is folded into the stored weights at build time, so the artifact's interface
            does not change.
        blocked_layout: on x86-64 CPUs, dense convolutions run in the blocked layout (NCHW16c)
            TVM's x86 schedules are written for, int8 ones as uint8 x int8 with VNNI dot
            products (``edgeopt.compile.blocked_layout``); false keeps NCHW.
    """

    trials: int = 0
    timeout_s: float | None = None
    db: str | None = None
    max_trials_per_task: int | None = None
    trials_per_round: int = 64
    trials_per_iter: int = 16
    cost_model: str = "xgb"
    build_timeout_s: float = 120.0
    weight_prepack: bool = True
    blocked_layout: bool = True
    population: int = 512
    tracker: str | None = None
    key: str | None = None

    def validate(self):
        if self.trials < 0:
            raise InputError(f"trials must be an integer >= 0, got {self.trials!r}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise InputError(f"timeout_s must be > 0, got {self.timeout_s!r}")
        if self.trials_per_round < 1:
            raise InputError(f"trials_per_round must be an integer >= 1, got {self.trials_per_round!r}")
        if self.trials_per_iter < 1:
            raise InputError(f"trials_per_iter must be an integer >= 1, got {self.trials_per_iter!r}")
        if self.population < 16:
            raise InputError(f"population must be an integer >= 16, got {self.population!r}")
        if bool(self.tracker) != bool(self.key):
            raise InputError("tracker and key go together: the tracker's address and the device key")
        if self.tracker and not self.trials:
            raise InputError("tracker is for tuning (candidates measured on its devices); give trials as well")
        if not self.build_timeout_s > 0:
            raise InputError(f"build_timeout_s must be > 0, got {self.build_timeout_s!r}")
        if self.cost_model not in COST_MODELS:
            raise InputError(f"cost_model must be one of {', '.join(COST_MODELS)}, got {self.cost_model!r}")


class TuningFailed(CheckFailed):
    """Tuning stopped on an error inside MetaSchedule; the database keeps its checked records."""


def structure_key(mod, spec: dict) -> str:
    """A key for (kernel structure, target): the same architecture on the same target shares it."""
    import tvm
    import tvm_ffi

    kernels = sorted(str(tvm_ffi.structural_hash(f)) for _, f in mod.functions_items()
                     if isinstance(f, tvm.tirx.PrimFunc))
    digest = hashlib.sha256(json.dumps([kernels, spec], sort_keys=True).encode()).hexdigest()
    return digest[:20]


def default_db_root() -> Path:
    from edgeopt.core.files import cache_root

    return cache_root("tuning")


def records_in(db: Path) -> int:
    """Measured candidates stored in a database folder (one JSON line each)."""
    f = db / "database_tuning_record.json"
    if not f.exists():
        return 0
    with open(f) as fh:
        return sum(1 for line in fh if line.strip())


def _drop_unnamed_handlers(logger) -> None:
    """MetaSchedule re-configures its logger with ``logging.config.dictConfig`` on every tuning
    call, listing the logger's current handlers by name; an unnamed one (pytest's
    LogCaptureHandler ends up there after a first tuning) makes that call fail. Keep named ones."""
    for handler in [h for h in logger.handlers if h.get_name() is None]:
        logger.removeHandler(handler)


def rpc_runner(tracker: str, key: str, progress: Progress = None):
    """MetaSchedule's ``RPCRunner`` on every device registered under ``key`` at ``tracker``.

    One measuring worker per registered device, so candidates are measured on all of them in
    parallel. Raises ``InputError`` at once when nothing listens at the tracker or no device is
    registered under the key (MetaSchedule itself would wait).
    """
    log = reporter(progress)
    from tvm.s_tir import meta_schedule as ms

    from edgeopt.runtimes.rpc import parse_address, registered_devices

    n = registered_devices(tracker, key)
    host, port = parse_address(tracker, "tracker address")
    log(f"tuning: measuring on {n} device(s) under {key!r} at the tracker {tracker}")
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                 session_priority=1, session_timeout_sec=120)
    return ms.runner.RPCRunner(rpc_config=config, max_workers=n)


def build_candidate(mod, target, _params=None):
    """MetaSchedule builder function: compile one scheduled candidate in a worker process.

    It is TVM's ``default_build`` minus ``import tvm.s_tir.tensor_intrin``: that import registers
    the tensor intrinsics of every backend (CUDA, ROCm, Hexagon, ARM, x86) by parsing TVMScript
    and takes 45-60 s on a 2-core CPU, in every fresh builder worker, longer than the
    builder's 30 s timeout, so every candidate of a large model failed as a "build error". A
    tensorized candidate already carries its intrinsic's body, so compiling it needs no registry.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


@contextlib.contextmanager
def native_stderr_to(path: Path):
    """Send what native code writes to stderr into ``path`` for the duration; yields a copy of
    the original descriptor 2.

    MetaSchedule's C++ side warns once per candidate that a tensor intrinsic does not fit
    ("Tensorize failed", over 10,000 lines in half an hour of ResNet-18 int8 tuning), straight
    to file descriptor 2; progress and errors reach the user through edgeopt's own log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as sink:
            os.dup2(sink.fileno(), 2)
        yield saved  # the user's stderr, for a line that must reach them (an interrupt)
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def exit_130_on_interrupt(cleanup: Callable[[], str], stderr_fd: int):
    """While MetaSchedule runs, Ctrl-C ends the process with exit code 130, cleanly.

    Python's default handler raises KeyboardInterrupt wherever TVM's C++ next checks for signals;
    unwinding through its task scheduler then ends in ``std::terminate`` (a segfault report and
    orphaned measurement workers), in a TuningFailed for a converted error (exit 1), or in
    "Exception ignored ... cannot join current thread" from its worker pools' destructors. So
    the handler raises nothing: it ends the builder and runner workers, runs ``cleanup`` (file
    work only, no TVM call: it records the trials and returns what to tell the user), writes
    that line to the user's stderr and leaves with ``os._exit(130)``, which runs no destructor.
    A second Ctrl-C during the cleanup ends the process at once (the default handler is back).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread; the caller's own handling applies
        return

    def on_interrupt(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        end_child_processes()
        try:
            line = cleanup()
        except Exception as e:  # the exit code must still say "interrupted"
            line = f"interrupted; the tuning database could not be checked: {e}"
        os.write(stderr_fd, f"edgeopt: {line}\n".encode())
        os._exit(130)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def end_child_processes(grace_s: float = 3.0) -> None:
    """Terminate this process's children (MetaSchedule's builder and runner workers), then kill
    those still running after ``grace_s``: an interrupted tuning leaves no worker behind."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(alive, timeout=grace_s)


#: After every kernel has a schedule, later rounds tune only the kernels that together take this
#: share of the model's time (best measured time x calls): the rest do not move the total.
TIME_SHARE = 0.95


def round_tasks(tasks: list, db: Path, per_iter: int, cap: int,
                spread: bool = True) -> tuple[list, int, str]:
    """(tasks to tune in the next round, trials per task at most, why) for a database folder.

    Kernels the database has no schedule for come first, one search iteration each, so a
    budget that ends early leaves no kernel naive. After that the budget goes where the time
    is: the kernels holding ``TIME_SHARE`` of the model's measured time, each allowed an even
    share of the trials among them (with ``spread``, ``cap`` of every task goes to these fewer
    ones; without, ``cap`` stays the limit), and MetaSchedule's gradient scheduler orders them by
    how fast their weighted time is falling.
    """
    from tvm.s_tir import meta_schedule as ms

    database = ms.database.JSONDatabase(work_dir=str(db))
    cost = {}
    for i, task in enumerate(tasks):
        kernel = task.dispatched[0]
        if not database.has_workload(kernel):
            continue
        top = database.get_top_k(database.commit_workload(kernel), 1)
        secs = [float(v) for v in (top[0].run_secs or [])] if top else []
        if secs:
            cost[i] = sum(secs) / len(secs) * int(task.weight)
    missing = [t for i, t in enumerate(tasks) if i not in cost]
    if missing:
        return missing, per_iter, "kernels without a schedule yet"
    total = sum(cost.values()) or 1.0
    heavy, share = [], 0.0
    for i in sorted(cost, key=cost.get, reverse=True):
        heavy.append(tasks[i])
        share += cost[i] / total
        if share >= TIME_SHARE:
            break
    if spread:
        cap = max(per_iter, cap * len(tasks) // len(heavy))
    return heavy, cap, f"the kernels taking {share:.0%} of the time"


def _split_hand_scheduled(tasks: list, target, db: Path) -> tuple[dict[int, list], list]:
    """({space size: tasks whose hand-written space the database has not measured whole}, the
    tasks for the search). A hand-scheduled kernel with as many records as its space has
    schedules is done and goes to neither."""
    from tvm.s_tir import meta_schedule as ms

    from .conv_schedules import hand_space_size

    database = ms.database.JSONDatabase(work_dir=str(db))
    hand: dict[int, list] = {}
    rest = []
    for task in tasks:
        with native_stderr_to(db / "logs" / "tvm_warnings.log"):  # design spaces warn natively
            size = hand_space_size(task.dispatched[0], target)
        if size is None:
            rest.append(task)
            continue
        kernel = task.dispatched[0]
        seen = len(database.get_top_k(database.commit_workload(kernel), size)) \
            if database.has_workload(kernel) else 0
        if seen < size:
            hand.setdefault(size, []).append(task)
    return hand, rest


def tune(mod, spec: dict, config: TuneConfig, progress: Progress = None) -> tuple[Path, dict]:
    """Tune ``mod`` (after the zero pipeline, inside the target scope) into its database.

    Returns the database folder and a summary: trials before/after, rounds, seconds, tasks.
    """
    log = reporter(progress)
    import tvm
    from tvm.s_tir import meta_schedule as ms

    t0 = time.perf_counter()  # the budget covers everything below, checks and design spaces too
    budget = RoundBudget(config.timeout_s, t0)
    kind = spec.get("kind", "llvm")
    load_tensor_intrinsics(kind)
    if kind == "llvm":
        from .blocked_layout import has_vnni
        from .conv_schedules import register_conv_rules

        register_conv_rules(vnni=has_vnni(spec))  # the blocked convs' own design spaces
    runner = "local"
    if config.tracker:
        runner = rpc_runner(config.tracker, config.key, progress)
    elif kind == "llvm":
        # candidates are measured in worker processes whose TVM thread pool would otherwise take
        # half the logical CPUs (TVM assumes hyper-threading): on 2 vCPUs, 1 thread, and the
        # search then ranks schedules for a machine the artifact does not run on
        os.environ.setdefault("TVM_NUM_THREADS", str(int(spec.get("num-cores") or os.cpu_count() or 1)))
    key = structure_key(mod, spec)
    db = Path(config.db) if config.db else default_db_root() / key
    db.mkdir(parents=True, exist_ok=True)
    target = tvm.target.Target(spec)
    from .tuning_db import check_database, model_trials, set_model_trials

    # a database another build or a killed run left with a record that does not replay would
    # stop MetaSchedule from loading any of it: set such records aside first
    if records_in(db):
        log(f"tuning: checking that the {records_in(db)} records of {db} replay")
    check_database(db, log, kind)
    # the budget counts this model's trials, not every record of a database shared with others
    before = model_trials(db, key)
    from tvm.s_tir.meta_schedule.relax_integration import extracted_tasks_to_tune_contexts

    log("tuning: extracting the model's kernels")
    tasks = ms.relax_integration.extract_tasks(mod, target)
    per_task = config.max_trials_per_task or max(8, config.trials // max(1, len(tasks)))
    rounds = 0
    round_sizes: list[int] = []  # tasks tuned in each round
    done = before
    # MetaSchedule's own logging is very chatty at INFO; progress is reported per round instead.
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    ms_logger.setLevel(logging.WARNING)
    if not tasks:
        log("tuning: nothing to tune (every kernel of this build comes from a library)")

    def run_round(chosen: list, step: int, cap: int, per_iter: int, whole_space: bool = False) -> int:
        """One MetaSchedule session over ``chosen``; returns the records it added."""
        _drop_unnamed_handlers(ms_logger)
        # MetaSchedule sizes its console handler by this level and then lowers the level to
        # DEBUG, so it is set again before every round
        ms_logger.setLevel(logging.WARNING)
        in_db = records_in(db)

        def interrupted() -> str:
            # files only: TVM is mid-call below this frame. The next build's check_database
            # replays the records (a line cut short by the interrupt is set aside there)
            kept = records_in(db)
            set_model_trials(db, key, done + max(0, kept - in_db))
            return (f"interrupted in tuning round {rounds + 1}; the database {db} keeps {kept} records "
                    "and the next build continues from them")

        deadline = t0 + config.timeout_s if config.timeout_s is not None else float("inf")
        try:
            contexts, weights = extracted_tasks_to_tune_contexts(
                extracted_tasks=chosen, work_dir=str(db), space="post-order-apply",
                strategy=search_strategy(config.population, per_iter if whole_space else None))
            # the gradient scheduler gives the next iteration to the task whose time (weighted by
            # its calls) has been falling fastest
            with native_stderr_to(db / "logs" / "tvm_warnings.log") as user_stderr, \
                    exit_130_on_interrupt(interrupted, user_stderr), workers_ended_at(deadline):
                ms.tune.tune_tasks(
                    tasks=contexts, task_weights=weights, work_dir=str(db), max_trials_global=step,
                    max_trials_per_task=cap, num_trials_per_iter=per_iter, cost_model=config.cost_model,
                    runner=runner, task_scheduler="gradient", measure_callbacks=stop_at_deadline(deadline),
                    builder=ms.builder.LocalBuilder(f_build=build_candidate,
                                                    timeout_sec=config.build_timeout_s))
        except KeyboardInterrupt:
            check_database(db, log, kind)  # a line cut short by the interrupt must not spoil the rest
            set_model_trials(db, key, done + max(0, records_in(db) - in_db))
            raise
        except Exception as e:
            if DEADLINE_REACHED in str(e):  # the round ends here and keeps what it measured
                log(f"tuning: the {config.timeout_s:.0f} s budget ended in round {rounds + 1}")
            else:
                kept = check_database(db, log, kind)["records"]
                raise TuningFailed(
                    f"tuning failed in round {rounds + 1}: {last_line(e)}; "
                    f"the database {db} keeps {kept} checked records: build again to continue from them, "
                    "or pass --tune-db (recipe: tune_db) with a new folder") from None
        # this round's records are checked now, while they are the only new ones
        log(f"tuning: round {rounds + 1} measured {max(0, records_in(db) - in_db)} candidates; "
            f"checking that they replay ({time.perf_counter() - t0:.0f} s)")
        check_database(db, log, kind)
        added = max(0, records_in(db) - in_db)
        set_model_trials(db, key, done + added)
        return added

    try:
        # kernels with a hand-written design space (conv_schedules) are measured whole, first: the
        # evolutionary search would spin on a space of a few tiles once it has seen them all
        hand, tasks = _split_hand_scheduled(tasks, target, db)
        out_of_time = False
        for size, group in sorted(hand.items()):
            while group and done < config.trials:
                # one search iteration measures a conv's whole space: as many convs as fit the budget
                fit = min(len(group), budget.iterations_affordable(size))
                if fit < 1:
                    out_of_time = True
                    break  # the next build goes on from the database
                chunk, group = group[:fit], group[fit:]
                log(f"tuning: {len(chunk)} convs with a hand-written schedule, each of its {size} tiles measured "
                    f"({time.perf_counter() - t0:.0f} s)")
                round_sizes.append(len(chunk))
                began = time.perf_counter()
                added = run_round(chunk, size * len(chunk), size, size, whole_space=True)
                budget.record(len(chunk), size * len(chunk), time.perf_counter() - began)
                rounds += 1
                done += added
            if out_of_time:
                break
        first_search = True
        while tasks and done < config.trials and not out_of_time:
            per_iter = config.trials_per_iter
            step = config.trials - done
            if first_search and config.timeout_s is not None:
                # a first round reaches every task it can, or untuned kernels stay naive: give each
                # task fewer candidates per search iteration when the budget cannot afford the
                # configured number (a task's iteration costs its search whatever it measures)
                while per_iter > 2 and budget.iterations_affordable(per_iter) < len(tasks):
                    per_iter = max(2, per_iter // 2)
            step = min(step, max(config.trials_per_round, per_iter * len(tasks)))
            chosen, cap, why = round_tasks(tasks, db, per_iter, per_task,
                                           spread=not config.max_trials_per_task)
            step = min(step, max(per_iter, cap * len(chosen)))
            # MetaSchedule keeps a round's records when it ends and cannot stop it half-way: a round
            # holds only the tasks and search iterations that fit in what is left of the budget
            fit = budget.iterations_affordable(per_iter)
            if fit < 1:
                log(f"tuning: {budget.left():.0f} s left of the {config.timeout_s:.0f} s budget is less than "
                    "a search iteration")
                break
            chosen = chosen[:fit]
            step = min(step, fit * per_iter)
            round_sizes.append(len(chosen))
            log(f"tuning: round {rounds + 1}, {done}/{config.trials} trials in {db} "
                f"({len(chosen)} of {len(tasks)} tasks: {why}; {time.perf_counter() - t0:.0f} s)")
            began = time.perf_counter()
            added = run_round(chosen, step, cap, per_iter)
            budget.record(-(-step // per_iter), step, time.perf_counter() - began)
            rounds += 1
            first_search = False
            if added == 0:  # every task reached its cap: nothing more to measure
                break
            done += added
    finally:
        # MetaSchedule's pools outlive the round that used them, and a worker whose parent
        # exits without closing its pool is left running: none is kept past tuning
        end_pool_workers()
    summary = {"db": str(db), "trials_before": before, "trials_after": done, "db_records": records_in(db),
               "rounds": rounds, "seconds": round(time.perf_counter() - t0, 1),
               "tasks": len(tasks) + sum(len(g) for g in hand.values()),
               "hand_scheduled": sum(len(g) for g in hand.values()),
               "round_tasks": round_sizes}
    return db, summary
