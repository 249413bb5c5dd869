"""One tuning database shared by the fp32, pruned and int8 builds of ResNet-18 and by MobileNetV2.

Builds the four models one after another with tuning into the same ``--tune-db`` folder (each
for ``--minutes`` of tuning), then checks that the database loads with every record
(``edgeopt.compile.tuning_db.check_database`` replays each one; nothing may be set aside) and that
MetaSchedule's own ``JSONDatabase`` loads it. Prints a Markdown table; ``--record`` writes it into
its section of ``benchmarks/RESULTS.md``.

Example:
    .venv/bin/python benchmarks/shared_tuning_db.py --minutes 3 --out build/shared-db
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("build/shared-db"))
    ap.add_argument("--minutes", type=float, default=3.0, help="tuning time per build")
    ap.add_argument("--trials", type=int, default=2000, help="trial budget per model (time stops first)")
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--resume", action="store_true",
                    help="keep --out and its database; build only the models whose artifact is missing "
                         "(continues a sequence that was stopped)")
    args = ap.parse_args(argv)

    from edgeopt.compile import BuildConfig, ExportConfig, TuneConfig, build, export
    from edgeopt.compile.tuning_db import REJECTED, check_database
    from edgeopt.compress import PruneConfig, QuantizeConfig, prune, quantize
    from edgeopt.pipeline.zoo import create
    from edgeopt.runtimes import load

    if args.out.exists() and not args.resume:
        shutil.rmtree(args.out)
    db = args.out / "db"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    resnet = create("resnet18")
    models = {
        "resnet18 fp32": export(resnet, ExportConfig(), x, out=args.out / "r18"),
        "resnet18 pruned 50%": export(prune(resnet, PruneConfig(amount=0.5, scope="local"), x).output,
                                      ExportConfig(), x, out=args.out / "r18-pruned"),
    }
    calib = [rng.standard_normal((1, 3, 224, 224)).astype(np.float32) for _ in range(8)]
    models["resnet18 int8"] = quantize(models["resnet18 fp32"], QuantizeConfig(method="minmax"), calib,
                                       out=args.out / "r18-int8")
    models["mobilenetv2 fp32"] = export(create("mobilenetv2"), ExportConfig(), x, out=args.out / "mnv2")
    rows = []
    for name, onnx_model in models.items():
        folder = args.out / f"tvm-{name.replace(' ', '-').replace('%', '')}"
        if args.resume and (folder / "manifest.json").exists():
            print(f"{name}: built in the earlier run, kept")
            continue
        t0 = time.perf_counter()
        # TVM's own kernels: the sequence is about the shared tuning database (kernels "auto" would
        # also build and time a oneDNN variant of every model)
        config = BuildConfig(tune=TuneConfig(trials=args.trials, timeout_s=args.minutes * 60, db=str(db)),
                             kernels="tvm")
        built = build(onnx_model, config, out=folder, progress=print)
        tuning = built.record["metrics"]["tuning"]
        ref = load(onnx_model.artifact.path).run(x)[0]
        got = load(built.artifact).run(x)[0]
        err = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
        rows.append((name, tuning["trials_before"], tuning["trials_after"], tuning["db_records"],
                     tuning["rounds"], time.perf_counter() - t0, err))
        print(rows[-1], flush=True)
    summary = check_database(db, print)

    from tvm.s_tir import meta_schedule as ms

    loaded = len(ms.database.JSONDatabase(str(db / "database_workload.json"),
                                          str(db / "database_tuning_record.json")).get_all_tuning_records())
    lines = ["| build | its trials before | its trials after | records in the database | rounds | wall s "
             "| max rel. error vs ORT |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {n} | {b} | {a} | {d} | {r} | {s:.0f} | {e:.1e} |" for n, b, a, d, r, s, e in rows]
    lines.append("")
    lines.append(f"Afterwards: {summary['records']} records over {summary['workloads']} workloads replay "
                 f"(set aside: {summary['rejected']}; {REJECTED} "
                 f"{'exists' if (db / REJECTED).exists() else 'was never written'}); MetaSchedule's "
                 f"JSONDatabase loads {loaded} records.")
    table = "\n".join(lines)
    print(table)
    if args.record:
        from results import record

        record("shared-tuning-db", "Can one tuning database serve several models and variants?", table,
               "`kernels: tvm`, one database folder for all four builds.")


if __name__ == "__main__":
    main()
