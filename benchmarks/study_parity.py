"""fp32 parity of each runtime's fp32 row with onnxruntime's in a finished study: the max relative
difference (max |a - b| / max |b|) of the first output over 3 seeded inputs; OpenVINO both at f32
and at the precision its rows ran (its default: bf16 where the CPU has it).

Usage: .venv/bin/python benchmarks/study_parity.py STUDY_FOLDER   (benchmarks/RESULTS.md)
"""
import json, sys
import numpy as np
from edgeopt.runtimes import load

study = sys.argv[1]
rows = json.load(open(f"{study}/report.json"))["variants"]
fp32 = {f"{v['runtime']}/{v['target']}": v for v in rows if v["name"] == "fp32" and v.get("status", "ok") == "ok"}
ort_row = next(v for k, v in fp32.items() if k.startswith("onnxruntime/"))
ort = load(ort_row["artifact"], threads=2)
shape = ort.inputs[0].shape
xs = [np.random.default_rng(s).standard_normal(shape).astype(np.float32) for s in range(3)]
want = [ort.run(x)[0] for x in xs]
def rel(a, b): return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))
runners = {}
for k, v in fp32.items():
    if k.startswith("onnxruntime/"):
        continue
    if v["runtime"] == "openvino":
        runners["openvino f32"] = load(ort_row["artifact"], runtime="openvino", precision="f32", threads=2)
        runners[f"openvino {v['target']} (as in the row)"] = load(ort_row["artifact"], runtime="openvino", threads=2)
    else:
        runners[f"{v['runtime']} {v['target']}"] = load(v["artifact"], threads=2)
for name, r in runners.items():
    print(f"{study.rstrip('/').split('/')[-1]}  {name}: max relative difference to onnxruntime fp32 "
          f"{max(rel(r.run(x)[0], w) for x, w in zip(xs, want)):.2e}")
