"""The search against a hand-written recipe, in one process so that latencies compare.

Runs RECIPE's own variants (``edgeopt run``) into OUT/reference, then ``edgeopt search`` on the
same recipe's ``search`` section into OUT/search, starting from the same trained base model (the
reference run's weights, passed as ``weights:``), and prints a table: the best reference variant
that meets the constraints (lowest latency) against the search's choice.

Example:
    $ .venv/bin/python benchmarks/search_bench.py benchmarks/search-fashion.yaml \\
          --budget-minutes 12 --max-accuracy-drop 0.01 --out build/search-bench-fashion
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path


def main(argv=None) -> int:
    from edgeopt.pipeline.recipe import load_recipe
    from edgeopt.pipeline.run import run_recipe
    from edgeopt.pipeline.search import SearchConstraints, search

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe")
    p.add_argument("--out", default=None)
    p.add_argument("--budget-minutes", type=float, default=30.0)
    p.add_argument("--max-accuracy-drop", type=float, default=None)
    p.add_argument("--max-size-mb", type=float, default=None)
    p.add_argument("--max-latency-ms", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    a = p.parse_args(argv)
    out = Path(a.out or f"build/search-bench-{Path(a.recipe).stem}")
    constraints = SearchConstraints(a.max_accuracy_drop, a.max_size_mb, a.max_latency_ms)
    recipe = load_recipe(a.recipe)

    t0 = time.monotonic()
    report = run_recipe(dataclasses.replace(recipe, search={}), out / "reference")
    ref_minutes = (time.monotonic() - t0) / 60
    weights = out / "reference" / "base-model" / "state_dict.pt"
    searched = dataclasses.replace(recipe, weights=str(weights)) if weights.is_file() else recipe
    t1 = time.monotonic()
    result = search(searched, out / "search", constraints=constraints, budget_minutes=a.budget_minutes,
                    seed=a.seed)
    search_minutes = (time.monotonic() - t1) / 60

    labelled = (report.get("task") or {}).get("metric") == "top1" and (report.get("task") or {}).get("labelled")
    ok = [v for v in report["variants"] if v.get("status") != "failed"]
    fp32 = next(v for v in ok if v["name"] == "fp32" and v["runtime"] == "onnxruntime")
    quality = (lambda v: v["accuracy"]) if labelled else (lambda v: v["agreement"])
    rows = []
    for v in ok:
        drop = quality(fp32) - quality(v)
        met = all(x <= 0 for x in constraints.violations(v["latency_ms"]["median"], v["size_bytes"] / 1e6, drop))
        rows.append((v, met))
    feasible = [v for v, met in rows if met]
    best = min(feasible, key=lambda v: (v["latency_ms"]["median"], -quality(v)), default=None)
    c = result.chosen
    lines = [f"recipe: {a.recipe}; constraints: "
             + (", ".join(f"{k}={v:g}" for k, v in constraints.to_dict().items() if v is not None) or "none"),
             f"reference run: {ref_minutes:.1f} min; search: {search_minutes:.1f} min, {len(result.trials)} trials "
             f"({sum(r['state'] == 'pruned' for r in result.trials)} pruned), stopped after {result.stopped}",
             "", "| | variant | runtime | median ms | size MB | " + ("accuracy" if labelled else "agreement")
             + " | meets constraints |", "|---|---|---|---|---|---|---|"]
    for v, met in sorted(rows, key=lambda r: r[0]["latency_ms"]["median"]):
        mark = "best reference" if v is best else "reference"
        lines.append(f"| {mark} | {v['name']} | {v['runtime']} | {v['latency_ms']['median']:.3f} | "
                     f"{v['size_bytes'] / 1e6:.3f} | {quality(v):.4f} | {'yes' if met else 'no'} |")
    if c:
        lines.append(f"| **search** | {c['variant']} | {c['runtime']} | {c['latency_ms']:.3f} | {c['size_mb']:.3f} | "
                     f"{c['quality']:.4f} | yes |")
        if best:
            faster = c["latency_ms"] <= best["latency_ms"]["median"]
            better = c["quality"] >= quality(best)
            verdict = ("at least as good" if faster and better else
                       "faster, at lower quality" if faster else "better quality, slower" if better else "worse")
            lines += ["", f"search vs best reference: {c['latency_ms'] / best['latency_ms']['median']:.2f}x latency, "
                      f"{(c['quality'] - quality(best)) * 100:+.2f} points: {verdict}"]
    else:
        lines.append("| **search** | none meets the constraints | | | | | |")
    text = "\n".join(lines)
    print(text)
    (out / "comparison.md").write_text(text + "\n")
    (out / "comparison.json").write_text(json.dumps({"chosen": c, "best_reference": best and best["name"] + "/" + best["runtime"],
                                                     "search_minutes": search_minutes, "reference_minutes": ref_minutes},
                                                    indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
