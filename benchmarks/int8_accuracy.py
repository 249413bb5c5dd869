"""int8 accuracy on four Fashion-MNIST models: edgeopt's PTQ, its accuracy-aware flow and NNCF.

    .venv/bin/pip install -r requirements/bench.txt
    .venv/bin/python benchmarks/int8_accuracy.py --data DIR [--models a,b] [--record]

``DIR`` holds Fashion-MNIST's four ``*-ubyte.gz`` IDX files (the Debian package
``dataset-fashion-mnist`` installs them). For each model of ``int8_models.py`` (trained once,
cached under build/int8_bench/): fp32 top-1 (onnxruntime); edgeopt's default ``quantize``
(mean_minmax, per-channel, u8 activations; ``--method`` / ``--per-tensor`` pick another PTQ
configuration for PTQ, the flow and QAT alike); edgeopt's accuracy-aware flow (``qat`` with ``ptq``:
PTQ, then equalization / bias correction / SmoothQuant, then at most two layers in float, then
QAT; budget 0.5 points on the 1,000 validation images); NNCF's ``quantize`` on the same ONNX
with the same 256 calibration images and its ``quantize_with_accuracy_control`` (same budget,
same validation images). Accuracies are on 2,000 test images. Latency: batch 1, 2 threads, the
edgeopt models on onnxruntime and the NNCF models on OpenVINO, each as a ratio to onnxruntime
fp32 measured in the same run. The per-layer debugger's costliest layers of the default PTQ
model are kept in float to show what they cost (``debugger: top-k in float``, k up to
``--float-top``). Where that PTQ loses more than a point, a second table gives the loss, what QAT
(same weight granularity) recovers, the debugger's costliest layers and what keeping them in
float recovers. ``--no-nncf`` skips NNCF.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from int8_models import MODELS, load_data, trained  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "build" / "int8_bench"


def ort_session(path, threads=2):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = threads, 1
    o.log_severity_level = 3
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def ov_model(path, threads=2):
    import openvino as ov

    core = ov.Core()
    return core.compile_model(core.read_model(str(path)), "CPU",
                              {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})


def logits_ort(path, x):
    s = ort_session(path)
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def logits_ov(path, x):
    c = ov_model(path)
    return np.concatenate([c(x[i:i + 1])[0] for i in range(len(x))])


def latency_ms(run, x, warmup=20, repeat=200):
    for i in range(warmup):
        run(x[i % len(x):i % len(x) + 1])
    times = []
    for i in range(repeat):
        t = time.perf_counter()
        run(x[i % len(x):i % len(x) + 1])
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def nncf_models(fp32: Path, data, out: Path, max_drop: float):
    """NNCF PTQ and accuracy-controlled PTQ of the same ONNX (ONNX backend), saved as ONNX."""
    import nncf
    import onnx

    model = onnx.load(str(fp32))
    name = model.graph.input[0].name
    calib = nncf.Dataset([{name: data.calib.x[i:i + 1]} for i in range(len(data.calib.x))])
    val_items = [({name: data.val.x[i:i + 1]}, int(data.val.y[i])) for i in range(len(data.val.x))]
    ptq = nncf.quantize(model, calib)
    onnx.save(ptq, str(out / "nncf_ptq.onnx"))

    def validate(m, items):
        import onnxruntime as ort

        path = out / "nncf_val.onnx"
        onnx.save(m, str(path))
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        hits = [int(np.argmax(s.run(None, feed)[0])) == label for feed, label in items]
        return float(np.mean(hits))

    ac_note = ""
    try:
        ac = nncf.quantize_with_accuracy_control(
            model, calib, nncf.Dataset(val_items, lambda item: item[0]), validation_fn=lambda m, d: validate(m, list(d)),
            max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE)
        onnx.save(ac, str(out / "nncf_ac.onnx"))
    except Exception as e:  # noqa: BLE001 - reported in the table
        ac_note = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
    return out / "nncf_ptq.onnx", (out / "nncf_ac.onnx") if not ac_note else None, ac_note


def bench_model(name, data, work: Path, args) -> dict:
    import edgeopt.compress as ec
    from edgeopt.compile import export
    from edgeopt.pipeline.tasks import Split

    model = trained(name, data, CACHE, epochs=args.epochs)
    if args.calib < len(data.calib):
        from int8_models import Split as DSplit

        data = type(data)(data.train, data.val, DSplit(data.calib.x[:args.calib], data.calib.y[:args.calib]),
                          data.test)
    d = work / name
    d.mkdir(parents=True)
    fp32 = export(model, None, data.test.x[:1], out=d / "fp32.onnx").path
    test = data.test
    acc = lambda logits: float(np.mean(logits.argmax(1) == test.y))  # noqa: E731
    row = {"model": name}
    t0 = time.time()
    row["fp32"] = acc(logits_ort(fp32, test.x))
    ptq = {"per_channel": not args.per_tensor} | ({"method": args.method} if args.method else {})
    row["ptq_config"] = ec.QuantizeConfig(**ptq).method + (", per-tensor weights" if args.per_tensor else "")
    row["calibration_images"], row["epochs"] = len(data.calib), args.epochs
    default = ec.quantize(fp32, ec.QuantizeConfig(**ptq), data.calib, out=d / "ptq.onnx")
    row["ptq"] = acc(logits_ort(default.path, test.x))
    row["costliest"] = default.metrics["costliest_layers"][:max(3, args.float_top)]
    # what the debugger's top layers cost: keep them in float (measured, no search); only worth
    # the extra quantizations where PTQ lost something
    for k in (range(1, args.float_top + 1) if row["fp32"] - row["ptq"] > 0.005 else ()):
        kept = ec.quantize(fp32, ec.QuantizeConfig(**ptq, nodes_to_exclude=tuple(row["costliest"][:k])),
                           data.calib, out=d / f"ptq-top{k}.onnx")
        row[f"ptq_top{k}_float"] = acc(logits_ort(kept.path, test.x))
    qat_config = ec.QATConfig(epochs=args.qat_epochs, max_train_samples=args.qat_samples, lr=args.qat_lr,
                              per_channel=not args.per_tensor)
    # the accuracy-aware flow: PTQ's rungs judged on data.val, QAT only when they miss the budget
    flow = ec.qat(model, replace(qat_config, ptq=ec.QuantizeConfig(**ptq, max_accuracy_drop=args.budget,
                                                                   max_float_nodes=2)),
                  data, teacher=model, calibration=data.calib, out=d / "best.onnx")
    row["best"] = acc(logits_ort(flow.path, test.x))
    row["attempts"] = [{k: a[k] for k in ("method", "transforms", "accuracy") if k in a}
                       | ({"nodes_in_float": len(a["nodes_in_float"])} if "nodes_in_float" in a else {})
                       for a in flow.metrics["attempts"]] or [{"method": "ptq", "transforms": []}]
    row["best_method"] = row["attempts"][-1]["method"] if flow.metrics.get("attempts") else "ptq"
    row["budget_met"] = flow.metrics.get("budget_met", True)
    # QAT on its own, for the 'recovers at least half' check where PTQ loses more than a point
    if row["fp32"] - row["ptq"] > 0.01 and row["best_method"] != "qat":
        q = ec.qat(model, qat_config, Split(data.train.x, data.train.y), teacher=model, calibration=data.calib.x, out=d / "qat.onnx")
        row["qat"] = acc(logits_ort(q.path, test.x))
    elif row["best_method"] == "qat":
        row["qat"] = row["best"]
    ptq_nncf = ac_nncf = None
    row["nncf_ptq"] = row["nncf_ac"] = None
    row["nncf_ac_note"] = "-"
    if args.nncf:
        ptq_nncf, ac_nncf, note = nncf_models(fp32, data, d, args.budget)
        row["nncf_ptq"] = acc(logits_ov(ptq_nncf, test.x))
        row["nncf_ac"] = acc(logits_ov(ac_nncf, test.x)) if ac_nncf else None
        row["nncf_ac_note"] = note
    # latency, all in this one run: ratio to onnxruntime fp32
    x = test.x[:64]
    runs = {"fp32": ort_session(fp32), "ptq": ort_session(default.path), "best": ort_session(flow.path)}
    lat = {}
    for k, s in runs.items():
        n = s.get_inputs()[0].name
        lat[k] = latency_ms(lambda a, s=s, n=n: s.run(None, {n: a}), x)
    for k, p in (("nncf_ptq", ptq_nncf), ("nncf_ac", ac_nncf)):
        if p is not None:
            c = ov_model(p)
            lat[k] = latency_ms(lambda a, c=c: c(a), x)
    row["latency_ms"] = lat
    row["seconds"] = time.time() - t0
    return row


def table(rows) -> str:
    def pct(v):
        return "-" if v is None else f"{v * 100:.2f}"

    def ratio(r, k):
        lat = r["latency_ms"]
        return f"{lat[k] / lat['fp32']:.2f}" if k in lat else "-"

    out = ["| model | fp32 top-1 | edgeopt PTQ (default) | edgeopt best (method) | QAT alone | "
           "debugger: top-1 / top-2 in float | NNCF PTQ | NNCF accuracy control | latency ratio: "
           "PTQ / best (ORT) | NNCF PTQ / AC (OpenVINO) | fp32 ms |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        how = r["best_method"] + (f" ({'+'.join(r['attempts'][-1].get('transforms', [])) or 'plain'})"
                                  if r["best_method"] != "qat" else "")
        if not r["budget_met"]:
            how += ", budget missed"
        out.append(
            f"| {r['model']} | {pct(r['fp32'])} | {pct(r['ptq'])} | {pct(r['best'])} ({how}) | "
            f"{pct(r.get('qat'))} | {pct(r.get('ptq_top1_float'))} / {pct(r.get('ptq_top2_float'))} | "
            f"{pct(r.get('nncf_ptq'))} | {pct(r['nncf_ac']) if r['nncf_ac'] is not None else r['nncf_ac_note']} | "
            f"{ratio(r, 'ptq')} / {ratio(r, 'best')} | {ratio(r, 'nncf_ptq')} / {ratio(r, 'nncf_ac')} | "
            f"{r['latency_ms']['fp32']:.3f} |")
    return "\n".join(out)


def loss_table(rows) -> str:
    """Models whose PTQ lost more than a point: QAT's recovery and the debugger's layers in float."""
    out = ["| model (fp32 epochs) | PTQ configuration | fp32 top-1 | PTQ top-1 | loss | QAT top-1 | "
           "QAT recovers | debugger's costliest layers | those layers kept in float: top-1 (share of the loss recovered) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        loss = r["fp32"] - r["ptq"]
        if loss <= 0.01:
            continue
        rec = lambda v: f"{(v - r['ptq']) / loss * 100:.0f}%"  # noqa: E731
        kept = [(k, r[f"ptq_top{k}_float"]) for k in range(1, 10) if f"ptq_top{k}_float" in r]
        out.append(
            f"| {r['model']} ({r.get('epochs', '-')}) | {r.get('ptq_config', '-')}, {r.get('calibration_images', '-')} "
            f"images | {r['fp32'] * 100:.2f} | {r['ptq'] * 100:.2f} | {loss * 100:.2f} | "
            + (f"{r['qat'] * 100:.2f} | {rec(r['qat'])} | " if r.get("qat") is not None else "- | - | ")
            + ", ".join(f"`{n}`" for n in r["costliest"][:max(len(kept), 1)]) + " | "
            + "; ".join(f"top-{k}: {v * 100:.2f} ({rec(v)})" for k, v in kept) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path, help="folder with Fashion-MNIST's IDX files")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--epochs", type=int, default=4, help="fp32 training epochs")
    p.add_argument("--budget", type=float, default=0.005)
    p.add_argument("--calib", type=int, default=256, help="calibration images (edgeopt and NNCF alike)")
    p.add_argument("--method", default=None, help="edgeopt PTQ calibration method (default: QuantizeConfig's)")
    p.add_argument("--per-tensor", action="store_true", help="per-tensor int8 weights (PTQ, flow and QAT)")
    p.add_argument("--float-top", type=int, default=2, help="keep the debugger's top 1..N layers in float")
    p.add_argument("--no-nncf", dest="nncf", action="store_false", help="skip NNCF")
    p.add_argument("--qat-epochs", type=int, default=2)
    p.add_argument("--qat-samples", type=int, default=6000)
    p.add_argument("--qat-lr", type=float, default=1e-4)
    p.add_argument("--json", type=Path, default=CACHE / "int8_accuracy.json")
    p.add_argument("--record", action="store_true", help="write the table into its section of benchmarks/RESULTS.md")
    p.add_argument("--from-json", nargs="*", type=Path, default=None,
                   help="build the table from earlier --json outputs (one run per model, e.g. run in "
                   "parallel) instead of measuring")
    args = p.parse_args(argv)
    if args.from_json:
        rows = [r for f in args.from_json for r in json.loads(f.read_text())]
    else:
        import torch

        torch.set_num_threads(2)
        data = load_data(args.data)
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.models.split(","):
                row = bench_model(name, data, Path(tmp), args)
                rows.append(row)
                print(json.dumps(row), flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    text = table(rows)
    losses = loss_table(rows)
    if losses.count("\n") > 1:
        text += "\n\n" + losses
    print(text)
    if args.record:
        from results import record

        # per-tensor weights are the configuration that loses more than a point: its own question
        if args.per_tensor:
            key, title = ("int8-loss-recovery", "When int8 PTQ loses more than a point, do QAT and the "
                          "debugger's layers in float recover it?")
        else:
            key, title = ("int8-accuracy", "Is edgeopt's int8 as accurate as NNCF's: default PTQ, the "
                          "accuracy-aware flow and NNCF?")
        record(key, title, text,
               f"DIR: the folder of the Debian package dataset-fashion-mnist (a table from `--from-json` "
               f"gathers runs of one model each). Batch 1, 2 threads; top-1 (%) on 2,000 Fashion-MNIST "
               f"test images; QAT: {args.qat_samples} samples, {args.qat_epochs} epochs.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
