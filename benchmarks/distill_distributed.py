"""Distillation on 1 process against torchrun with N processes (gloo), same seed and global batch.

    .venv/bin/python benchmarks/distill_distributed.py [--nproc 2] [--epochs 10] [--record]

The digits_cnn teacher is trained (12 epochs), pruned 50% (structured), and the pruned student is
distilled with the same DistillConfig on one process and on N. Reported: test top-1 of each and
wall-clock time. On a 2-core machine N processes share the same two cores, so the time shows
the overhead of the distributed path, not a speed-up; the issue's bar is accuracy within 0.5
points.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import edgeopt.compress as ec
from edgeopt.pipeline.tasks import TrainConfig, load_task, train
from edgeopt.runtimes.torch_runner import torch_outputs
from edgeopt.pipeline.zoo import create

from results import record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--record", action="store_true")
    args = p.parse_args(argv)
    task = load_task("digits")
    teacher = train(create("digits_cnn"), task, TrainConfig(epochs=12), progress=False)
    t_acc = task.score(torch_outputs(teacher, task.test.x)[0])
    student = ec.prune(teacher, ec.PruneConfig(amount=0.5, scope="local"), torch.zeros(1, 1, 32, 32)).output
    cfg = ec.DistillConfig(epochs=args.epochs, seed=args.seed, shift=2, patience=None)
    rows = ["| processes | global batch | epochs | test top-1 % | wall s |", "|---|---|---|---|---|"]
    accs = {}
    for n in (1, args.nproc):
        t0 = time.perf_counter()
        m = ec.distill(student, cfg, task, teacher=teacher, progress=False, nproc=n).output
        s = time.perf_counter() - t0
        accs[n] = task.score(torch_outputs(m, task.test.x)[0])
        rows.append(f"| {n} | {cfg.batch_size} | {args.epochs} | {accs[n] * 100:.2f} | {s:.0f} |")
        print(rows[-1], flush=True)
    note = (f"Teacher: {t_acc * 100:.2f}%. Student: 50% structured pruning. Difference: "
            f"{abs(accs[1] - accs[args.nproc]) * 100:.2f} points (bar: 0.5).")
    table = "\n".join(rows)
    print(table)
    print(note)
    if args.record:
        record("distill-distributed",
               f"Does distillation on {args.nproc} processes reach the accuracy of 1 (torchrun, gloo, digits)?",
               table, note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
