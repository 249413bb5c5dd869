"""TVM against onnxruntime on the real models' studies, head to head in one process.

    .venv/bin/python benchmarks/real_models/latency.py STUDY [STUDY ...] [--record]

Every STUDY is an ``edgeopt run`` output folder of a recipe in benchmarks/real_models/ (with the
``onnxruntime`` and ``tvm`` targets). For each variant both rows' artifacts are loaded and timed in
``--rounds`` interleaved rounds of ``--repeat`` runs (``search_bench.head_to_head``; the study's own
figures were taken minutes apart, on whatever load there was then); a latency is the median of the
round medians, the spread the range of the round medians. Each runner times its own example inputs (a study may hold
some inputs constant in one artifact and not in the other). The bar of the table: TVM at most 1.5x
onnxruntime at the same precision.

``--record`` writes the table into benchmarks/RESULTS.md (section ``real-models-latency``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BAR = 1.5


def rows_of(study: Path) -> dict[str, dict[str, dict]]:
    """{variant: {runtime: report row}} of the study's rows that were built and timed."""
    report = json.loads((study / "report.json").read_text())
    out: dict[str, dict[str, dict]] = {}
    for row in report["variants"]:
        out.setdefault(row["name"], {})[row["runtime"]] = row
    return out


def measure(studies: list[Path], rounds: int, repeat: int, warmup: int, threads: int) -> tuple[list[str], dict]:
    """The table's lines and, per variant kind (fp32 / int8), the models at or under the bar."""
    from search_bench import head_to_head

    lines = ["| model | variant | onnxruntime ms (round range) | TVM ms (round range) | TVM / onnxruntime | <= 1.5x |",
             "|---|---|---|---|---|---|"]
    met: dict[str, list[str]] = {}
    for study in studies:
        model = study.name.removeprefix("study-")
        for variant, by_runtime in rows_of(study).items():
            ort, tvm = by_runtime.get("onnxruntime"), by_runtime.get("tvm")
            failed = [f"{rt}: {row['error']}" for rt, row in (("onnxruntime", ort), ("tvm", tvm))
                      if row is not None and row.get("status") == "failed"]
            if ort is None or tvm is None or failed:
                lines.append(f"| {model} | {variant} | | | | no row to time ({'; '.join(failed) or 'a runtime is missing'}) |")
                continue
            timed = head_to_head([ort["artifact"], tvm["artifact"]], warmup, repeat, threads, rounds)
            (o, olo, ohi), (t, tlo, thi) = [(h["median"], min(h["rounds"]), max(h["rounds"])) for h in timed]
            ok = t / o <= BAR
            kind = met.setdefault("int8" if variant.startswith("int8") else variant, [])
            if ok and model not in kind:
                kind.append(model)
            lines.append(f"| {model} | {variant} | {o:.3f} ({olo:.3f}-{ohi:.3f}) | {t:.3f} ({tlo:.3f}-{thi:.3f}) | "
                         f"{t / o:.2f}x | {'yes' if ok else 'no'} |")
            print(lines[-1], flush=True)
    return lines, met


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", type=Path, help="study folders (edgeopt run --out)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--record", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    lines, met = measure(args.studies, args.rounds, args.repeat, args.warmup, args.threads)
    models = len(args.studies)
    summary = [f"- {kind}: {len(names)} of {models} models at or under {BAR}x ({', '.join(names)})"
               for kind, names in sorted(met.items())]
    body = "\n".join(lines) + "\n\n" + "\n".join(summary)
    print("\n".join(summary))
    if args.record:
        from results import record

        record("real-models-latency",
               "Is TVM within 1.5x of onnxruntime on the real pretrained models from PyPI wheels?",
               "Studies first, one per model: `.venv/bin/edgeopt run "
               "benchmarks/real_models/NAME.yaml --out DIR/study-NAME` (models, wheels and tasks: "
               "benchmarks/real_models/README.md); then this script times each variant's two artifacts head "
               "to head.\n\n" + body,
               f"Batch 1, {args.threads} threads, {args.rounds} interleaved rounds of {args.repeat} runs per "
               f"artifact; untuned TVM (`kernels: auto`). Load average (1 min) when the run began: "
               f"{load_before:.1f}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
