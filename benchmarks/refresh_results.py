"""Write `make bench`'s results into their section of benchmarks/RESULTS.md: the micro-benchmarks
and the digits study, dated, with the machine fingerprint.

    .venv/bin/python benchmarks/refresh_results.py build/bench/micro.json build/bench/digits/report.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edgeopt.pipeline.report_text import markdown
from edgeopt.runtimes import machine_fingerprint

from results import record


def main(argv=None) -> int:
    argv = argv if argv is not None else sys.argv[1:]
    micro = json.loads(Path(argv[0]).read_text())
    rows = ["| benchmark | median | min | rounds |", "|---|---|---|---|"]
    for b in micro["benchmarks"]:
        s = b["stats"]
        rows.append(f"| {b['name']} | {s['median'] * 1e3:.3f} ms | {s['min'] * 1e3:.3f} ms | {s['rounds']} |")
    fp = machine_fingerprint()
    body = (f"Machine: {fp['cpu']}, {fp['cores']} cores; "
            + ", ".join(f"{k} {v}" for k, v in fp["versions"].items()) + "\n\n" + "\n".join(rows))
    if len(argv) > 1:
        report = json.loads(Path(argv[1]).read_text())
        body += "\n\nDigits study (`edgeopt run benchmarks/digits.yaml`):\n\n" + markdown(report).split("\n", 2)[2]
    record("make-bench", "What do `make bench`'s micro-benchmarks and digits study measure?", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
