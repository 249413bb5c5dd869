"""Compression on a task: lowrank and structured pruning, each recovered by knowledge
distillation and, for comparison, by plain fine-tuning on hard labels for the same epochs.

    .venv/bin/python benchmarks/compress_digits.py [--epochs 10] [--record]
    .venv/bin/python benchmarks/compress_digits.py --task fashion_mnist --limit 10000 \
        --train-epochs 4 --epochs 2 --energy 0.97 --students lowrank-responses,prune --record

Teacher: the task's zoo model (``--model``) trained once with the task defaults (``--train-epochs``
overrides the epochs). Every compressed student is exported with the parity check, and scored on
the test split with onnxruntime. Recovered rows give mean +- sample std over the seeds; the
"KD - FT" rows give the difference of the means and that difference in units of the larger of
the two seed standard deviations.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from edgeopt.compile import ExportConfig, export
from edgeopt.compress import (DistillConfig, LowRankConfig, PruneConfig, count_flops, count_params,
                              distill, last_record, lowrank, prune)
from edgeopt.compress.fidelity import runner_outputs
from edgeopt.pipeline.tasks import TrainConfig, load_task, train
from edgeopt.pipeline.zoo import create
from edgeopt.runtimes import load

from results import make_key, record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--energy", type=float, default=0.9)
    p.add_argument("--amount", type=float, default=0.5)
    p.add_argument("--seeds", type=int, default=3, help="recovery runs per variant (mean reported)")
    p.add_argument("--task", default="digits", help="task spec for load_task (default digits)")
    p.add_argument("--limit", type=int, default=None, help="at most this many samples per split")
    p.add_argument("--model", default=None, help="zoo model of the teacher (default: the task's)")
    p.add_argument("--train-epochs", type=int, default=None,
                   help="teacher training epochs (default: TrainConfig's)")
    p.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    p.add_argument("--students", default="lowrank-weights,lowrank-responses,prune",
                   help="comma-separated subset of lowrank-weights, lowrank-responses, prune")
    p.add_argument("--record", action="store_true")
    args = p.parse_args(argv)
    task = load_task(args.task, limit=args.limit)
    model = args.model or task.model
    tcfg = TrainConfig() if args.train_epochs is None else TrainConfig(epochs=args.train_epochs)
    teacher = train(create(model), task, tcfg, progress=False)
    x1 = task.test.x[:1]
    base = {"params": count_params(teacher), "flops": count_flops(teacher, x1)}
    rows = ["| variant | params | FLOPs | params ratio | FLOPs ratio | top-1 (ORT; mean, per seed) | drop (points) | epochs |",
            "|---|---|---|---|---|---|---|---|"]

    def score(model, tmp, name) -> float:
        path = export(model, ExportConfig(), x1, out=Path(tmp) / f"{name}.onnx",
                      check_inputs=[task.test.x[i:i + 1] for i in range(8)]).path
        return task.score(runner_outputs(load(path), task.test.x))

    with tempfile.TemporaryDirectory() as tmp:
        acc0 = score(teacher, tmp, "teacher")

        def row(name, models, epochs="-"):
            models = models if isinstance(models, list) else [models]
            params, flops = count_params(models[0]), count_flops(models[0], x1)
            accs = [score(m, tmp, f"v{len(rows)}_{i}") for i, m in enumerate(models)]
            acc = sum(accs) / len(accs)
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            spread = (f" ± {std * 100:.2f} ({', '.join(f'{a * 100:.2f}' for a in accs)})"
                      if len(accs) > 1 else "")
            rows.append(f"| {name} | {params:,} | {flops:,} | {base['params'] / params:.2f}x "
                        f"| {base['flops'] / flops:.2f}x | {acc * 100:.2f}%{spread} | {(acc0 - acc) * 100:.2f} | {epochs} |")
            print(rows[-1], flush=True)
            return acc, std

        row("fp32 teacher", teacher)
        students = {
            "lowrank-weights": (f"lowrank energy {args.energy} (weights)", lambda: lowrank(
                teacher, LowRankConfig(energy=args.energy), x1, progress=False).output),
            "lowrank-responses": (f"lowrank energy {args.energy} (responses)", lambda: lowrank(
                teacher, LowRankConfig(energy=args.energy, energy_on="responses"), x1,
                calibration=task.calib.x, progress=False).output),
            "prune": (f"prune {args.amount:.0%} structured", lambda: prune(
                teacher, PruneConfig(amount=args.amount, scope="local"), x1).output),
        }
        chosen = [k.strip() for k in args.students.split(",") if k.strip()]
        unknown = sorted(set(chosen) - set(students))
        if unknown:
            p.error(f"unknown students {unknown}; expected {sorted(students)}")
        gaps = []
        for key in chosen:
            name, make = students[key]
            student = make()
            row(name + " (no recovery)", student)
            stats = {}
            for label, alpha in (("+ distillation", 0.7), ("+ fine-tuning (hard labels)", 0.0)):
                tuned = [distill(student, DistillConfig(
                    epochs=args.epochs, alpha=alpha, temperature=args.temperature, shift=2,
                    patience=None, seed=seed), task, teacher=teacher, progress=False).output
                    for seed in range(args.seeds)]
                stats[alpha] = row(f"{name} {label}", tuned,
                                   last_record(tuned[0])["metrics"]["epochs_run"])
            (kd, kd_std), (ft, ft_std) = stats[0.7], stats[0.0]
            sd = max(kd_std, ft_std)
            gaps.append(f"| {name} | {(kd - ft) * 100:+.2f} | {sd * 100:.2f} | "
                        + (f"{(kd - ft) / sd:+.1f}" if sd > 0 else "n/a") + " |")
            print(gaps[-1], flush=True)
    if gaps:
        rows += ["", "| student | KD - FT (points) | larger seed std (points) | KD - FT in std units |",
                 "|---|---|---|---|", *gaps]
    table = "\n".join(rows)
    print(table)
    if args.record:
        record(make_key("compress", task.name),
               f"How far do lowrank and pruning compress the {task.name} CNN, and does distillation "
               "beat fine-tuning?", table,
               f"Teacher: {model}, {tcfg.epochs} epochs on {len(task.train):,} training images"
               f"{'' if args.limit is None else f' (--limit {args.limit})'}. "
               f"Distillation: T={args.temperature:g}, alpha=0.7, {args.epochs} epochs, AdamW 1e-3 cosine, 2-pixel shift "
               f"augmentation, seeds 0..{args.seeds - 1}; fine-tuning: the same with alpha=0 (hard "
               "labels only). Ratios are against the teacher; top-1 by onnxruntime on the exported "
               f"(parity-checked) model, {len(task.test):,} test images (one image = "
               f"{100 / len(task.test):.2g} points); mean ± sample std over seeds. "
               f"CPU: {_cpu()}.")
    return 0


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
