"""int8 with and without the output guard on an ONNX model: every output and Concat slice's SNR.

Usage:
    .venv/bin/python benchmarks/int8_output_guard.py MODEL.onnx CALIB.npz [--input-shape 1,3,320,320]

CALIB.npz holds one array per model input (N samples stacked). The first half calibrates, the
second half is held out for the figures printed here (the record's own figures are on the
calibration samples). Prints one table: output slice, SNR in dB without and with the guard, and
what the guard kept in float.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    import edgeopt.compress as ec
    from edgeopt.compress.output_guard import FloatGraph, output_fidelity

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("calibration")
    p.add_argument("--input-shape", default=None)
    args = p.parse_args(argv)
    data = dict(np.load(args.calibration))
    n = len(next(iter(data.values())))
    calib = [{k: v[i:i + 1] for k, v in data.items()} for i in range(n // 2)]
    held = [{k: v[i:i + 1] for k, v in data.items()} for i in range(n // 2, n)]
    rows = {}
    kept = []
    with tempfile.TemporaryDirectory() as tmp:
        for guard in (False, True):
            out = Path(tmp) / f"guard-{guard}.onnx"
            r = ec.quantize(args.model, ec.QuantizeConfig(guard_outputs=guard, debug_layers=0), calib,
                            out=out, input_shape=args.input_shape)
            graph = FloatGraph(Path(args.model), held)
            for row in output_fidelity(graph, out, held):
                rows.setdefault(row["output"], {})[guard] = row["snr_db"]
            if guard:
                kept = r.record["metrics"].get("kept_float", [])
            print(f"guard {'on' if guard else 'off'}: {r.record['metrics'].get('summary', '')}", file=sys.stderr)
    print("| output (slice) | int8 SNR dB, guard off | int8 SNR dB, guard on |")
    print("|---|---|---|")
    for name, v in rows.items():
        print(f"| `{name}` | {v.get(False, float('nan')):.1f} | {v.get(True, float('nan')):.1f} |")
    print()
    print(f"kept in float by the guard ({len(kept)}): " + "; ".join(f"{k['node']} ({k['op']}): {k['why']}" for k in kept[:5])
          + (" ..." if len(kept) > 5 else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
