"""Keep a MetaSchedule JSON tuning database loadable: check every record, set aside the bad ones.

MetaSchedule's ``JSONDatabase`` loads all records at once and replays each record's trace on its
workload; one record that does not replay (a trace written for a kernel whose blocks are named
differently, a line cut short by a killed process, a hand edit) makes the whole database
unreadable, fp32 records and hours of tuning included. ``check_database`` replays every record
the same way, one at a time, moves the ones that fail to ``rejected_records.json`` beside the
database (with the reason) and rewrites the record file atomically with the good ones. The
tuner calls it before and after every round, so a bad record costs that record only.

Example:
    >>> from edgeopt.compile.tuning_db import check_database  # doctest: +SKIP
    >>> check_database("~/.cache/edgeopt/tuning/3f2a...")  # doctest: +SKIP
    {'records': 1317, 'workloads': 41, 'rejected': 0}
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable

from edgeopt.core.errors import InputError, last_line
from edgeopt.core.files import write_text_atomic

from .intrinsics import load_tensor_intrinsics

RECORDS = "database_tuning_record.json"
WORKLOADS = "database_workload.json"
REJECTED = "rejected_records.json"
#: Size and modification time of the files when they were last found good: unchanged files are
#: not replayed again (a 1,300-record database takes seconds to check).
STAMP = ".checked"


def _stamp(db: Path) -> str:
    parts = []
    for name in (WORKLOADS, RECORDS):
        st = (db / name).stat() if (db / name).exists() else None
        parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}" if st else f"{name}:-")
    return " ".join(parts)


def check_database(db: str | os.PathLike, log: Callable[[str], None] = lambda s: None,
                   kind: str = "llvm") -> dict:
    """Replay every record of the database folder ``db``; set aside those that fail.

    Returns ``{"records": kept, "workloads": n, "rejected": set aside now}``. A folder without a
    database is fine (nothing to check). Raises ``InputError`` when a workload line other than a
    cut-short last one cannot be read (records point at workloads by line number, so it cannot be
    dropped): the message says how to start a fresh database. ``kind`` is the target kind the
    database was tuned for (its tensor intrinsics are registered before replaying).
    """
    from tvm.s_tir import meta_schedule as ms

    db = Path(db).expanduser()
    records_file, workloads_file = db / RECORDS, db / WORKLOADS
    if not records_file.exists() and not workloads_file.exists():
        return {"records": 0, "workloads": 0, "rejected": 0}
    if (db / STAMP).exists() and (db / STAMP).read_text() == _stamp(db):
        records = sum(1 for ln in records_file.open() if ln.strip()) if records_file.exists() else 0
        workloads = sum(1 for ln in workloads_file.open() if ln.strip()) if workloads_file.exists() else 0
        return {"records": records, "workloads": workloads, "rejected": 0}

    # traces of tensorized candidates name the target's intrinsics (x86/ARM for llvm, wmma for cuda):
    # unregistered, every such record would fail to replay and be set aside wrongly
    load_tensor_intrinsics(kind)
    workload_lines = workloads_file.read_text().splitlines() if workloads_file.exists() else []
    workloads: list = []
    keep_workloads: list[str] = []
    for i, line in enumerate(workload_lines):
        if not line.strip():
            continue
        try:
            workloads.append(ms.database.Workload.from_json(json.loads(line)))
            keep_workloads.append(line)
        except Exception as e:
            if i == len(workload_lines) - 1:  # cut short by a killed process: nothing points at it yet
                log(f"tuning database {db}: dropped an unreadable last workload line ({last_line(e)})")
                workloads.append(None)
                continue
            raise InputError(f"tuning database {str(db)!r}: workload line {i + 1} cannot be read "
                             f"({last_line(e)}); move {WORKLOADS} and {RECORDS} aside to start afresh "
                             "(or pass another --tune-db; recipe: tune_db)") from None
    kept: list[str] = []
    rejected: list[dict] = []
    lines = records_file.read_text().splitlines() if records_file.exists() else []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            index, record = json.loads(line)
            if not (isinstance(index, int) and 0 <= index < len(workloads)) or workloads[index] is None:
                raise ValueError(f"workload {index!r} does not exist")
            ms.database.TuningRecord.from_json(record, workloads[index])
            kept.append(line)
        except Exception as e:  # each bad record is set aside on its own; the others stay
            rejected.append({"line": n, "reason": last_line(e)[:300], "record": line})
    if rejected:
        previous = (db / REJECTED).read_text() if (db / REJECTED).exists() else ""
        write_text_atomic(db / REJECTED, previous + "".join(json.dumps(r) + "\n" for r in rejected))
        write_text_atomic(records_file, "".join(ln + "\n" for ln in kept))
        reasons = sorted({r["reason"] for r in rejected})
        log(f"tuning database {db}: set aside {len(rejected)} record(s) that do not replay "
            f"(kept {len(kept)}; see {db / REJECTED}): {'; '.join(reasons)[:300]}")
    if len(keep_workloads) != len([ln for ln in workload_lines if ln.strip()]):
        write_text_atomic(workloads_file, "".join(ln + "\n" for ln in keep_workloads))
    write_text_atomic(db / STAMP, _stamp(db))
    return {"records": len(kept), "workloads": len(keep_workloads), "rejected": len(rejected)}


#: Trials each model (by ``tune.structure_key``) has measured into this database.
LEDGER = "edgeopt_trials.json"


def model_trials(db: str | os.PathLike, key: str) -> int:
    """Trials the model ``key`` has measured into ``db``. A database whose ledger names no other
    model (the default folder holds one model structure) counts every record as this model's,
    so records of a round cut short before the ledger was written still count."""
    db = Path(db)
    ledger = db / LEDGER
    if ledger.exists():
        counts = json.loads(ledger.read_text())
        if not set(counts) <= {key}:  # shared: other models' records are not this one's trials
            return int(counts.get(key, 0))
    f = db / RECORDS
    return sum(1 for line in f.open() if line.strip()) if f.exists() else 0


def set_model_trials(db: str | os.PathLike, key: str, trials: int) -> None:
    from edgeopt.core.files import write_json_atomic

    db = Path(db)
    ledger = json.loads((db / LEDGER).read_text()) if (db / LEDGER).exists() else {}
    ledger[key] = int(trials)
    write_json_atomic(db / LEDGER, ledger)


#: A block name that carries a Relax variable's name (``lv108_red``: the reduction of ``lv108``).
_VAR_IN_NAME = re.compile(r"(?<![A-Za-z0-9])lv[0-9]+")
_BLOCK = re.compile(r'T\.sblock\("([^"]*)"\)')


def canonical_block_names(mod):
    """``mod`` with block names that no longer depend on the model around a kernel.

    Legalization names some blocks after the Relax variable they read (``lv108_red``), and the
    variables are numbered through the whole model. MetaSchedule matches kernels by structure
    (names ignored) but its traces address blocks by name, so a record tuned for ``lv108_red`` in
    an int8 model was filed under the identical kernel of an fp32 model that calls it ``lv77_red``,
    and could not be replayed there. Each such name becomes ``b<position>_...`` (the block's
    position in its kernel), the same for every model that has the kernel.
    """
    import tvm

    updates = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        text = func.script()
        names = _BLOCK.findall(text)
        if not any(_VAR_IN_NAME.search(n) for n in names):
            continue
        for i, name in enumerate(names):
            if _VAR_IN_NAME.search(name):
                text = text.replace(f'T.sblock("{name}")', f'T.sblock("{_VAR_IN_NAME.sub(f"b{i}", name)}")')
        updates[gv] = tvm.script.from_source(text)
    for gv, func in updates.items():
        mod[gv] = func
    return mod


def task_speeds(db: str | os.PathLike) -> list[dict]:
    """Per tuned kernel of a database: its name, operations (TVM's estimate: multiply-adds
    count 2), the best measured time and the rate that gives; the kernels taking longest first.

    Example:
        >>> rows = task_speeds("build/tuning/resnet18")  # doctest: +SKIP
        >>> rows[0]["gops"]  # doctest: +SKIP
        412.3
    """
    import tvm
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops

    load_tensor_intrinsics("llvm")  # tensorized traces (VNNI) name their intrinsic
    database = ms.database.JSONDatabase(work_dir=str(db))
    best: dict = {}
    for rec in database.get_all_tuning_records():
        secs = [float(s) for s in rec.run_secs or []]
        if not secs:
            continue
        key = int(tvm_ffi.structural_hash(rec.workload.mod))
        t = sum(secs) / len(secs)
        if key not in best or t < best[key][1]:
            best[key] = (rec.workload.mod, t)
    rows = []
    for mod, t in best.values():
        func = next(f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
        blocks = [b for b in _BLOCK.findall(func.script()) if b != "root"]
        heavy = [b for b in blocks if _HEAVY.search(b)]
        name = heavy[0] if heavy else "+".join(blocks[:2])
        ops = float(estimate_tir_flops(mod))
        rows.append({"kernel": name, "gop": ops / 1e9, "best_ms": t * 1e3, "gops": ops / t / 1e9})
    return sorted(rows, key=lambda r: -r["best_ms"])


#: Block names of the kernels that carry a model's arithmetic, to name a task by.
_HEAVY = re.compile(r"conv|matmul|dense|pool|softmax|NCHWc")
