"""Which quantize setting keeps PP-OCRv4's recognizer's strings: CTC-greedy strings identical to
fp32's on the rendered lines, one row per setting, plus the accuracy-aware study's model.

    .venv/bin/python benchmarks/real_models/rec_int8.py MODEL.onnx TASKS_DIR [STUDY_DIR ...] [--record]

MODEL.onnx: the recognizer as shipped (dynamic dims; quantized at 1x3x48x320). TASKS_DIR holds
make_tasks.py's ocr_rec.npz; calibration is the study's own calibration split of it (20 lines),
every one of its 200 lines is scored. Each STUDY_DIR adds a row for its `variants/int8/quantize`
model (e.g. the study of ocr-rec.yaml, `quantize: {min_agreement: 0.95}`), with what its record
says it kept in float, and the same model as its `variants/int8/tvm-cpu` artifact runs it. --record writes the table into RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

import edgeopt.compress as ec
from edgeopt.pipeline.output_quality import decode_sequences
from edgeopt.pipeline.tasks import load_task
from edgeopt.runtimes import load

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from results import record  # noqa: E402

SHAPE = "1,3,48,320"
#: (label, QuantizeConfig fields): the default, each calibration method, and the scope.
SETTINGS = [
    ("default (mean_minmax, scope all)", {}),
    ("method minmax", {"method": "minmax"}),
    ("method percentile (99.999)", {"method": "percentile"}),
    ("scope compute", {"scope": "compute"}),
    ("scope compute, method minmax", {"scope": "compute", "method": "minmax"}),
]


def outputs(path, x: np.ndarray, runtime: str = "onnxruntime") -> np.ndarray:
    runner = load(path, runtime, threads=2)
    return np.concatenate([runner.run([x[i:i + 1]])[0] for i in range(len(x))])


def identical(test: np.ndarray, ref: np.ndarray) -> float:
    a, b = decode_sequences(test, "ctc"), decode_sequences(ref, "ctc")
    return float(np.mean([p == q for p, q in zip(a, b)]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("tasks", type=Path)
    parser.add_argument("studies", type=Path, nargs="*")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    task = load_task(str(args.tasks / "ocr_rec.npz"))
    x = np.load(args.tasks / "ocr_rec.npz")["x"].astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        from edgeopt.compile.onnx_prepare import prepare_onnx_file
        from edgeopt.compile.onnx_shapes import resolve_input_shapes
        from edgeopt.runtimes.onnx_file import load_onnx, onnx_io

        inputs, _ = onnx_io(load_onnx(args.model))
        prepare_onnx_file(args.model, fp32, input_shapes=resolve_input_shapes(inputs, SHAPE, option="SHAPE"))
        ref = outputs(fp32, x)
        for label, fields in SETTINGS:
            config = ec.QuantizeConfig(debug_layers=0, **fields)
            r = ec.quantize(fp32, config, task.calib, out=Path(tmp) / "int8.onnx")
            m = r.record["metrics"]
            rows.append((label, identical(outputs(r.path, x), ref), None, m["summary"]))
            print(f"{label}: {rows[-1][1] * 100:.1f}% ({m['summary']})", flush=True)
    for study in args.studies:
        folder = study / "variants" / "int8" / "quantize"
        m = json.loads((folder / "manifest.json").read_text())["history"][-1]
        metrics, config = m["metrics"], m["config"]
        budget = {k: config[k] for k in ("min_agreement", "max_accuracy_drop") if config.get(k) is not None}
        label = (f"study {study.name}: {budget} -> scope {metrics.get('scope')}, float: "
                 + (", ".join(metrics["nodes_in_float"]) or "none"))
        tvm = study / "variants" / "int8" / "tvm-cpu"
        on_tvm = identical(outputs(tvm, x, "tvm"), ref) if tvm.is_dir() else None
        rows.append((label, identical(outputs(folder, x), ref), on_tvm, metrics["summary"]))
        print(f"{label}: {rows[-1][1] * 100:.1f}%", flush=True)
    body = ("| quantize setting | strings identical to fp32 (200 lines), onnxruntime | the same model built by TVM "
            "(study's tvm-cpu) | compute nodes |\n|---|---|---|---|\n")
    body += "".join(f"| {label} | {share * 100:.1f}% | {'-' if tvm is None else f'{tvm * 100:.1f}%'} | {summary} |\n"
                    for label, share, tvm, summary in rows)
    print(body)
    if args.record:
        record("rec-int8", "Which quantize setting keeps PP-OCRv4's recognized strings in int8?", body,
               note="Calibration: the task's calibration split (20 of the 200 rendered lines); every line "
                    "scored, CTC greedy (PaddleOCR's decode). Quality figures do not depend on load. The study "
                    "row is `.venv/bin/edgeopt run benchmarks/real_models/ocr-rec.yaml --out STUDY_DIR` "
                    "(`quantize: {min_agreement: 0.95}`, judged on the 20 validation lines by identical "
                    "strings, since the task declares its output a CTC sequence): its ladder is in the "
                    "model's record (`attempts`).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
