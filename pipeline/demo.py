"""The built-in demo: digits_cnn trained on scikit-learn's digits, on three runtimes.

Example:
    >>> from edgeopt.pipeline.demo import run_demo  # doctest: +SKIP
    >>> report = run_demo(out="build/demo", repeat=50)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

from .report import text_table, write_report
from .study import BenchConfig, compare_runtimes
from .tasks import TrainConfig, load_task, torch_logits, train
from .zoo import create


def run_demo(out: str | os.PathLike = "build/demo", epochs: int = 12, threads: int | None = None,
             warmup: int = 10, repeat: int = 100,
             runtimes: Sequence[str] = ("torch", "onnxruntime", "tvm")) -> dict:
    """Train, export, compile, time and score; print the table; write report.json/report.md."""
    t0 = time.perf_counter()
    bench = BenchConfig(warmup=warmup, repeat=repeat, threads=threads)
    task = load_task("digits")
    print(f"digits task: {len(task.train)} train / {len(task.val)} val / {len(task.calib)} "
          f"calibration / {len(task.test)} test images, 1x32x32")
    model = train(create("digits_cnn"), task, TrainConfig(epochs=epochs))
    acc = task.score(torch_logits(model, task.test.x))
    print(f"trained digits_cnn: {acc * 100:.2f}% top-1 on the test split")
    example = task.test.x[:1]
    report = compare_runtimes(model, example, Path(out), runtimes=runtimes, task=task, bench=bench)
    json_path, md_path = write_report(report, out)
    print()
    print(text_table(report))
    digests = {v["predictions_sha256"] for v in report["variants"]}
    print()
    print("top-1 predictions identical across runtimes: " + ("yes" if len(digests) == 1 else "NO"))
    print(f"wrote {json_path} and {md_path} in {time.perf_counter() - t0:.0f} s")
    return report
