"""Export parity of every zoo model: max abs and relative error of onnxruntime against torch.

    .venv/bin/python benchmarks/export_parity.py --record

Each model is exported with its default input shape; parity runs on the example input and on
four more seeded random inputs. ``--record`` writes the table into its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeopt.compile import ExportConfig, export
from edgeopt.pipeline.zoo import ZOO, create

from results import record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--record", action="store_true")
    args = p.parse_args(argv)
    rows = ["| model | input | opset | ONNX size | max abs error | max rel error | inputs | export s |",
            "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, entry in sorted(ZOO.items()):
            rng = np.random.default_rng(0)
            x = rng.standard_normal(entry.input_shape).astype(np.float32)
            checks = [rng.standard_normal(entry.input_shape).astype(np.float32) for _ in range(4)]
            t0 = time.perf_counter()
            r = export(create(name), ExportConfig(), x, out=Path(tmp) / f"{name}.onnx", check_inputs=checks)
            secs = time.perf_counter() - t0
            parity = r.metrics["parity"]
            rows.append(f"| {name} | {'x'.join(map(str, entry.input_shape))} | {r.record['metrics']['opset']} "
                        f"| {r.path.stat().st_size / 1e6:.2f} MB | {parity['max_abs']:.2e} "
                        f"| {parity['max_rel']:.2e} | {parity['n_inputs']} | {secs:.1f} |")
    table = "\n".join(rows)
    print(table)
    if args.record:
        record("export-parity", "Do the exported ONNX models compute what the torch models compute?", table,
               "Relative error is max|torch - onnxruntime| / max|torch| per output; the tolerance is 1e-4.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
