"""``edgeopt shadow`` on logged inputs: disagreement against a direct computation, and peak memory.

    .venv/bin/python benchmarks/shadow_memory.py --study build/fashion-beyond [--repeat-log 1,5]

Takes the fp32 (champion) and int8 (candidate) onnxruntime artifacts of a Fashion-MNIST study
(``edgeopt run benchmarks/fashion-beyond.yaml --out build/fashion-beyond``), writes the 10,000
test images as a log (``.npy``; with ``--repeat-log 5`` also a log of the same images 5 times
over), runs ``edgeopt shadow`` on each log in a child process and reads the child's peak
resident memory from ``resource.getrusage(RUSAGE_CHILDREN)``. The direct computation runs both
models on every image held in memory and compares the top-1 labels. Prints one markdown block.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def peak_rss_mb(cmd: list[str]) -> tuple[int, float, float]:
    """Run ``cmd`` in a fresh child (this script forks one child per run, so the children's
    maximum is that run's); its exit code, peak RSS in MB and wall seconds."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "rc = subprocess.call(sys.argv[1:]); w = time.perf_counter() - t; "
               "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, w)")
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, check=True)
    rc, mb, wall = out.stdout.split()[-3:]
    return int(rc), float(mb), float(wall)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default="build/fashion-beyond")
    p.add_argument("--repeat-log", default="1,5", help="log lengths as multiples of the test split")
    args = p.parse_args()

    from edgeopt.pipeline.tasks import load_task

    study = Path(args.study)
    champion, candidate = study / "variants" / "fp32" / "onnx", study / "variants" / "int8" / "quantize"
    x = load_task("fashion_mnist").test.x
    with tempfile.TemporaryDirectory() as t:  # the logs are large: never leave them behind
        rows = _runs(Path(t), x, candidate, champion, [int(s) for s in args.repeat_log.split(",")])
    print("| logged inputs | log size | shadow disagreements | rate | direct computation | inputs written | "
          "peak RSS | wall | SQNR | KL | latency int8 / fp32 (median ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n, size, dis, rate, dir_, saved, mb, wall, sq, kl, lat in rows:
        print(f"| {n:,} | {size:.0f} MB | {dis} | {rate * 100:.2f}% | {dir_} | {saved} | {mb:.0f} MB | "
              f"{wall:.0f} s | {sq:.1f} dB | {kl:.2e} | {lat['candidate']['median']:.3f} / "
              f"{lat['champion']['median']:.3f} |")


def _runs(tmp: Path, x, candidate: Path, champion: Path, repeats: list[int]) -> list[tuple]:
    from edgeopt.runtimes import load

    exe = str(Path(sys.executable).with_name("edgeopt"))

    # Direct computation: both models over every input held in memory, top-1 compared.
    c, h = load(candidate, threads=1), load(champion, threads=1)
    a = np.array([c.run([x[i:i + 1]])[0].argmax() for i in range(len(x))])
    b = np.array([h.run([x[i:i + 1]])[0].argmax() for i in range(len(x))])
    direct = int(np.sum(a != b))

    rows = []
    for k in repeats:
        log = tmp / f"log-x{k}.npy"
        mm = np.lib.format.open_memmap(log, mode="w+", dtype=np.float32, shape=(k * len(x), *x.shape[1:]))
        for j in range(k):
            mm[j * len(x):(j + 1) * len(x)] = x
        mm.flush()
        del mm
        out = tmp / f"out-x{k}"
        rc, mb, wall = peak_rss_mb([exe, "shadow", str(candidate), "--champion", str(champion), "--inputs",
                                    str(log), "--out", str(out), "--threads", "1"])
        s = json.loads((out / "shadow.json").read_text())
        saved = np.load(out / "disagreements.npy", mmap_mode="r")
        index = np.load(out / "disagreements.npz")["index"]
        same = all(np.array_equal(saved[i:i + 256], x[index[i:i + 256] % len(x)]) for i in range(0, len(index), 256))
        rows.append((k * len(x), log.stat().st_size / 2**20, s["disagreements"], s["disagreement"], k * direct,
                     f"{len(saved)} ({'= log[index]' if same else 'DIFFERENT from log[index]'})", mb, wall, s["sqnr_db"], s["kl_mean"], s["latency_ms"]))
    return rows


if __name__ == "__main__":
    main()
