"""The search against a hand-written recipe, in one process so that latencies compare.

Runs RECIPE's own variants (``edgeopt run``) into OUT/reference, then ``edgeopt search`` on the
same recipe's ``search`` section into OUT/search, starting from the same trained base model (the
reference run's weights, passed as ``weights:``), and prints a table: the best reference variant
that meets the constraints (chosen by the search's own rule: the most accurate within
``choose_tolerance`` of the lowest latency) against the search's choice.

When the search's choice and the best reference variant both run off torch, the two artifacts
are timed again head to head at the end (interleaved rounds in this process, so that load
drift hits both alike); the verdict uses those timings and calls the latencies a tie when they
differ by less than the rounds' spread (or 2%).

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


ROUNDS = 9


def head_to_head(paths: list[str], warmup: int, repeat: int, threads: int, rounds: int = ROUNDS) -> list[dict]:
    """Time artifacts in interleaved rounds: per artifact the median of the round medians and the
    spread (inter-quartile range of the round medians), in ms."""
    import numpy as np

    from edgeopt.runtimes import load
    from edgeopt.runtimes.base import example_inputs

    runners = [load(p, threads=threads) for p in paths]
    inputs = [example_inputs(r.inputs) for r in runners]
    rounds_ms: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):
        for i, (r, x) in enumerate(zip(runners, inputs)):
            rounds_ms[i].append(r.benchmark(x, warmup=warmup, repeat=repeat).latency.to_report()["median"])
    out = []
    for ms in rounds_ms:
        q1, med, q3 = np.percentile(ms, [25, 50, 75])
        out.append({"median": float(med), "iqr": float(q3 - q1), "rounds": [round(m, 5) for m in ms]})
    return out


def verdict(c_ms: float, b_ms: float, noise_ms: float, c_q: float, b_q: float) -> tuple[str, bool]:
    """(words, meets the bar): the bar is lower latency at equal or better quality, or better
    quality at equal or lower latency; latencies within ``noise_ms`` are equal."""
    tie = abs(c_ms - b_ms) <= noise_ms
    lat = "equal latency (within noise)" if tie else "lower latency" if c_ms < b_ms else "higher latency"
    qual = "equal quality" if abs(c_q - b_q) < 1e-9 else "better quality" if c_q > b_q else "lower quality"
    faster_or_tie = tie or c_ms < b_ms
    meets = faster_or_tie and c_q >= b_q - 1e-9
    if meets and tie and qual == "equal quality":
        words = "ties the best reference (at least as good, not better)"
    elif meets:
        words = f"at least as good: {lat}, {qual}"
    else:
        words = f"not at least as good: {lat}, {qual}"
    return words, meets


def runtime_margins(trials: list[dict], tolerance: float, chosen: dict | None, recipe) -> list[str]:
    """Per runtime the search tried: the trial it would have chosen had the recipe listed that
    runtime alone (the search's own rule over that runtime's trials), all of them re-timed head to
    head with the choice; lines saying the margin of the choice to the best single-runtime choice
    of every other runtime."""
    from edgeopt.pipeline.measure import BenchConfig
    from edgeopt.pipeline.search import choose

    runtimes = sorted({r.get("runtime") for r in trials if r.get("runtime")})
    if chosen is None or len(runtimes) < 2:
        return []
    best = {rt: choose([r for r in trials if r.get("runtime") == rt], tolerance)[1] for rt in runtimes}
    timed = [rt for rt in runtimes if best[rt] is not None and rt != "torch"]
    bench = BenchConfig(**recipe.bench)
    h2h = dict(zip(timed, head_to_head([best[rt]["artifact"] for rt in timed], bench.warmup, bench.repeat,
                                       bench.resolved_threads))) if timed else {}
    lines = ["", f"Best choice per runtime (the search's rule over that runtime's trials; re-timed head to head, "
             f"{ROUNDS} interleaved rounds):", "",
             "| runtime | trials measured | its choice | median ms (search) | median ms (head to head) | quality | vs the search's choice |",
             "|---|---|---|---|---|---|---|"]
    ref = h2h[chosen["runtime"]]["median"] if chosen["runtime"] in h2h else chosen["latency_ms"]
    others = []
    for rt in runtimes:
        n = sum(r.get("runtime") == rt and r["state"] == "complete" and "repeat_of" not in r for r in trials)
        b = best[rt]
        if b is None:
            lines.append(f"| {rt} | {n} | none meets the constraints | | | | |")
            continue
        ms = h2h[rt]["median"] if rt in h2h else b["latency_ms"]
        if rt != chosen["runtime"]:
            others.append((ms, rt))
        again = f"{ms:.3f} (IQR {h2h[rt]['iqr']:.3f})" if rt in h2h else "not re-timed (torch)"
        name = rt + (" (chosen)" if rt == chosen["runtime"] else "")
        lines.append(f"| {name} | {n} | {b['variant']} | {b['latency_ms']:.3f} | {again} | {b['quality']:.4f} | "
                     f"{ms / ref:.2f}x |")
    if others:
        ms, rt = min(others)
        lines += ["", f"Margin: the search's choice ({chosen['variant']} on {chosen['runtime']}, {ref:.3f} ms) against "
                  f"the best single-runtime choice on another runtime ({best[rt]['variant']} on {rt}, {ms:.3f} ms): "
                  f"{ref / ms:.2f}x latency."]
    return lines


def main(argv=None) -> int:
    from edgeopt.pipeline.recipe import load_recipe
    from edgeopt.pipeline.run import run_recipe
    from edgeopt.pipeline.search import search
    from edgeopt.pipeline.search_space import SearchConstraints

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe")
    p.add_argument("--out", default=None)
    p.add_argument("--budget-minutes", type=float, default=30.0)
    p.add_argument("--max-accuracy-drop", type=float, default=None)
    p.add_argument("--max-size-mb", type=float, default=None)
    p.add_argument("--max-latency-ms", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop-asking-at", default=None, metavar="HH:MM",
                   help="UTC wall-clock time after which the search asks no new trial: the budget is cut "
                        "to end there when the reference run leaves less than --budget-minutes")
    a = p.parse_args(argv)
    out = Path(a.out or f"build/search-bench-{Path(a.recipe).stem}")
    constraints = SearchConstraints(a.max_accuracy_drop, a.max_size_mb, a.max_latency_ms)
    recipe = load_recipe(a.recipe)

    t0 = time.monotonic()
    report = run_recipe(dataclasses.replace(recipe, search={}), out / "reference")
    ref_minutes = (time.monotonic() - t0) / 60
    weights = out / "reference" / "base-model" / "state_dict.pt"
    searched = dataclasses.replace(recipe, weights=str(weights)) if weights.is_file() else recipe
    budget = a.budget_minutes
    if a.stop_asking_at:
        import datetime as dt

        now = dt.datetime.now(dt.timezone.utc)
        h, m = (int(x) for x in a.stop_asking_at.split(":"))
        end = now.replace(hour=h, minute=m, second=0, microsecond=0)
        left = (end - now).total_seconds() / 60
        if left < budget:
            print(f"search_bench: budget cut from {budget:g} to {max(left, 0.1):.1f} min (--stop-asking-at "
                  f"{a.stop_asking_at} UTC)", flush=True)
            budget = max(left, 0.1)
    t1 = time.monotonic()
    result = search(searched, out / "search", constraints=constraints, budget_minutes=budget,
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
    # the same rule as the search's choice: the most accurate within choose_tolerance of the fastest
    from edgeopt.pipeline.search_space import SearchSpace

    tol = SearchSpace.from_dict(recipe.search).choose_tolerance
    fastest = min((v["latency_ms"]["median"] for v in feasible), default=None)
    near = [v for v in feasible if v["latency_ms"]["median"] <= fastest * (1 + tol)] if feasible else []
    best = min(near, key=lambda v: (-quality(v), v["latency_ms"]["median"]), default=None)
    c = result.chosen
    lines = [f"recipe: {a.recipe}; constraints: "
             + (", ".join(f"{k}={v:g}" for k, v in constraints.to_dict().items() if v is not None) or "none"),
             f"reference run: {ref_minutes:.1f} min; search (budget {budget:.1f} min): {search_minutes:.1f} min, "
             f"{len(result.trials)} trials "
             f"({sum(r['state'] == 'pruned' for r in result.trials)} pruned), stopped after {result.stopped}",
             "", "| | variant | runtime | median ms | size MB | " + ("accuracy" if labelled else "agreement")
             + " | meets constraints |", "|---|---|---|---|---|---|---|"]
    for v, met in sorted(rows, key=lambda r: r[0]["latency_ms"]["median"]):
        mark = "best reference" if v is best else "reference"
        lines.append(f"| {mark} | {v['name']} | {v['runtime']} | {v['latency_ms']['median']:.3f} | "
                     f"{v['size_bytes'] / 1e6:.3f} | {quality(v):.4f} | {'yes' if met else 'no'} |")
    h2h = None
    if c:
        lines.append(f"| **search** ({c.get('origin', 'sampler')}) | {c['variant']} | {c['runtime']} | "
                     f"{c['latency_ms']:.3f} | {c['size_mb']:.3f} | {c['quality']:.4f} | yes |")
        if best:
            from edgeopt.pipeline.measure import BenchConfig

            bench = BenchConfig(**recipe.bench)
            from edgeopt.pipeline.search_space import steps_key

            same = c["runtime"] == best["runtime"] and steps_key(c["steps"]) == steps_key(best.get("steps", []))
            b_ms, c_ms = best["latency_ms"]["median"], c["latency_ms"]
            # noise of the two separate measurements: the larger (p90 - median)
            noise = max(best["latency_ms"].get("p90", b_ms) - b_ms, (c.get("latency") or {}).get("p90", c_ms) - c_ms,
                        0.02 * b_ms)
            basis = "measured minutes apart (reference run, then search)"
            if "torch" not in (c["runtime"], best["runtime"]):
                hb, hc = head_to_head([best["artifact"], c["artifact"]], bench.warmup, bench.repeat,
                                      bench.resolved_threads)
                h2h = {"best_reference": hb, "chosen": hc}
                b_ms, c_ms = hb["median"], hc["median"]
                noise = max(hb["iqr"], hc["iqr"], 0.02 * b_ms)
                basis = (f"re-timed head to head, {ROUNDS} interleaved rounds of {bench.repeat} runs: best reference "
                         f"{b_ms:.4f} ms (IQR {hb['iqr']:.4f}), search {c_ms:.4f} ms (IQR {hc['iqr']:.4f})")
            words, meets = verdict(c_ms, b_ms, noise, c["quality"], quality(best))
            lines += ["", f"search vs best reference ({basis}): {c_ms / b_ms:.2f}x latency "
                      f"(noise band {noise:.4f} ms), {(c['quality'] - quality(best)) * 100:+.2f} points: {words}"
                      + (" - the search chose the reference's own variant" if same else "")
                      + f". Bar met: {'yes' if meets else 'no'}."]
    else:
        lines.append("| **search** | none meets the constraints | | | | | |")
    lines += runtime_margins(result.trials, tol, c, recipe)
    lines += ["", "Search trials:", "", "| trial | origin | variant | runtime | state | median ms | quality |",
              "|---|---|---|---|---|---|---|"]
    for r in result.trials:
        ms = f"{r['latency_ms']:.3f}" if r.get("latency_ms") is not None else ""
        qv = f"{r['quality']:.4f}" if r.get("quality") is not None else ""
        state = r["state"] + (f" (repeats {r['repeat_of']})" if "repeat_of" in r else "") \
            + (f": {r['why']}" if r.get("why") else "") + (f": {r['error']}" if r.get("error") else "")
        lines.append(f"| {r['number']} | {r.get('origin', '')} | {r.get('variant', '')} | {r.get('runtime', '')} | "
                     f"{state} | {ms} | {qv} |")
    text = "\n".join(lines)
    print(text)
    (out / "comparison.md").write_text(text + "\n")
    (out / "comparison.json").write_text(json.dumps({"chosen": c, "best_reference": best and best["name"] + "/" + best["runtime"],
                                                     "search_minutes": search_minutes, "reference_minutes": ref_minutes, "budget_minutes": budget,
                                                     "head_to_head": h2h},
                                                    indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
