"""Every row of real-model studies and each output's quality against fp32, from their report.json
(benchmarks/real_models/README.md): one table line per variant x runtime, a failed row with its
one-line reason.

    .venv/bin/python benchmarks/real_models/rows.py /tmp/real/models/study-silero-vad ... [--record]

``--record`` writes the table into benchmarks/RESULTS.md (section ``real-models-more``). Latency
is left out: it belongs to the latency section, measured on a quiet machine. ``--vad STUDY TASK``
adds what a voice-activity detector's rows decide: the share of the task's chunks whose speech
decision (probability > 0.5) is fp32's, over every chunk of the task (a study scores its test
split only).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RECIPES = Path(__file__).resolve().parent


def wheel_of(recipe: Path) -> str:
    """The recipe's first comment line up to its colon: the wheel and its version."""
    first = recipe.read_text().splitlines()[0].lstrip("# ")
    return first.split(":")[0]


def quality(row: dict) -> str:
    """Each output's figure (the report's own label: top-1 share, SNR in dB, a worse channel)
    with its cosine to fp32."""
    parts = []
    for q in row.get("output_quality", []):
        cosine = q.get("cosine")
        parts.append(q["label"] + (f", cosine {cosine:.4f}" if cosine is not None else ""))
    return "; ".join(parts)


def table(studies: list[Path]) -> str:
    lines = ["| model (recipe) | wheel | variant | runtime | row | quality per output against fp32 |",
             "|---|---|---|---|---|---|"]
    for study in studies:
        name = study.name.removeprefix("study-")
        recipe = RECIPES / f"{name}.yaml"
        wheel = wheel_of(recipe) if recipe.is_file() else "?"
        report = json.loads((study / "report.json").read_text())
        for row in report["variants"]:
            failed = row.get("status") == "failed"
            lines.append(f"| {name} | {wheel} | {row['name']} | {row['runtime']} ({row['target']}) | "
                         f"{'failed: ' + row['error'] if failed else 'present'} | {'' if failed else quality(row)} |")
    return "\n".join(lines)


def speech_decisions(study: Path, task: Path) -> str:
    """Each row's speech decisions (first output > 0.5) against the fp32 row of the same runtime,
    on every sample of ``task`` (a .npz with one array per model input)."""
    import numpy as np

    from edgeopt.pipeline.measure import collect_outputs
    from edgeopt.runtimes import load
    from edgeopt.runtimes.artifact import load_artifact

    report = json.loads((study / "report.json").read_text())
    with np.load(task) as data:
        inputs = {k: data[k] for k in data.files if k not in ("y", "metric", "outputs")}
    speech = {}
    for row in report["variants"]:
        if row.get("status") != "failed":
            runner = load(load_artifact(row["artifact"]), threads=1)
            speech[(row["name"], row["runtime"])] = collect_outputs(runner.run, inputs)[0].reshape(-1) > 0.5
    lines = []
    for (name, runtime), decided in speech.items():
        fp32 = speech.get(("fp32", runtime))
        if name != "fp32" and fp32 is not None:
            lines.append(f"{study.name.removeprefix('study-')} {name} on {runtime}: the speech decision is fp32's on "
                         f"{np.mean(decided == fp32):.1%} of {len(decided)} chunks (fp32 says speech on "
                         f"{np.mean(fp32):.1%}, {name} on {np.mean(decided):.1%})")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", type=Path, help="study folders (edgeopt run --out)")
    parser.add_argument("--record", action="store_true", help="write the table into benchmarks/RESULTS.md")
    parser.add_argument("--vad", nargs=2, type=Path, metavar=("STUDY", "TASK"),
                        help="a voice-activity study and its task: the speech decisions against fp32's")
    args = parser.parse_args(argv)
    body = table(args.studies)
    if args.vad:
        body += "\n\n" + speech_decisions(*args.vad)
    print(body)
    if args.record:
        from results import record

        command = ("The studies, one per model: `.venv/bin/edgeopt run "
                   "benchmarks/real_models/NAME.yaml --out /tmp/real/models/study-NAME` (models, wheels and tasks: "
                   "benchmarks/real_models/README.md)")
        record("real-models-more",
               "Do a recurrent, an audio and an embedding model from PyPI wheels run every row, and what does int8 keep per output?",
               command + "\n\n" + body,
               "Quality is each output against fp32's on the task's test split, by the kind the task declares "
               "(`classes`: identical top-1; `embedding` / `regression`: SNR of the error against the output's own "
               "variation, and the per-sample cosine; a channel far below the whole is named). Latency is not in "
               "this table: these studies ran on a shared 2-core machine under load.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
