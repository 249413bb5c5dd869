"""``edgeopt search``: search a recipe's space for the best variant under constraints.

Search pruning amounts, low-rank budgets, distillation, quantization choices and the recipe's
runtimes (the recipe's `search` section; defaults when absent) with Optuna's multi-objective TPE for
low latency, small size and high accuracy (agreement on unlabelled tasks). Writes search.json (every
trial, the Pareto set), chosen/ (the chosen artifact), chosen-recipe.yaml, report.json/.md and
index.html with the search's progress into --out. A candidate that fails is built once: the sampler
is told, it is never proposed again, and a step the model cannot do (a low-rank budget it cannot
meet) leaves the space. Re-running with the same arguments resumes. Exit 1 when no variant meets the
constraints (the closest are listed), 2 on a malformed recipe or constraint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import EPILOG, add_command, positive_int, say


def _number(text: str) -> float:
    """A constraint value: any number here; ``SearchConstraints`` checks the range (exit 2)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def add_parser(sub):
    s = add_command(sub, __doc__, run, epilog=EPILOG.replace("1 a check failed", "1 no variant meets the constraints"))
    s.add_argument("recipe", metavar="RECIPE.yaml")
    s.add_argument("--out", default=None, help="output folder (default: build/<recipe name>-search)")
    s.add_argument("--target", default=None,
                   help="search on this target of the recipe only (onnxruntime, torch, tvm-cpu ...; "
                   "default: every target of the recipe is a choice)")
    s.add_argument("--max-accuracy-drop", type=_number, default=None, metavar="P",
                   help="largest accuracy drop against fp32, as a fraction (0.01 = 1 point; agreement "
                   "on unlabelled tasks)")
    s.add_argument("--max-size-mb", type=_number, default=None, metavar="S", help="largest artifact size in MB")
    s.add_argument("--max-latency-ms", type=_number, default=None, metavar="L",
                   help="largest median latency in ms")
    s.add_argument("--budget-minutes", type=_number, default=30.0, metavar="M",
                   help="stop asking new trials after this many minutes (default 30)")
    s.add_argument("--trials", type=positive_int, default=None, metavar="N",
                   help="stop when the study holds N finished trials (default: no cap)")
    s.add_argument("--seed", type=int, default=None, help="the sampler's seed (default: the recipe's seed)")
    return s


def run(args) -> int:
    from edgeopt.pipeline.recipe import load_recipe
    from edgeopt.pipeline.search import search
    from edgeopt.pipeline.search_space import SearchConstraints

    constraints = SearchConstraints(max_accuracy_drop=args.max_accuracy_drop, max_size_mb=args.max_size_mb,
                                    max_latency_ms=args.max_latency_ms)
    recipe = load_recipe(args.recipe)
    out = args.out or str(Path("build") / f"{Path(args.recipe).stem}-search")
    result = search(recipe, out, target=args.target, constraints=constraints, budget_minutes=args.budget_minutes,
                    trials=args.trials, seed=args.seed, progress=say)
    if result.chosen is None:
        failed = sum(r["state"] == "failed" and "repeat_of" not in r for r in result.trials)
        if not result.closest:
            print(f"no variant meets the constraints: none was measured ({failed} failed; errors in search.json)")
        else:
            print("no variant meets the constraints; the closest:")
        for r in result.closest:
            if r["state"] == "pruned":
                print(f"  trial {r['number']}: {r['variant']} on {r['runtime']}: pruned: {r.get('why')}")
            else:
                print(f"  trial {r['number']}: {r['variant']} on {r['runtime']}: {r['latency_ms']:.3f} ms, "
                      f"{r['size_mb']:.3f} MB, quality {r['quality']:.4f}: {r.get('why')}")
        say(f"edgeopt search: no variant meets the constraints in {len(result.trials)} trials "
            f"(details: {result.paths['search']})")
        return 1
    c = result.chosen
    print(f"chosen: trial {c['number']}: {c['variant']} on {c['runtime']}: {c['latency_ms']:.3f} ms, "
          f"{c['size_mb']:.3f} MB, quality {c['quality']:.4f}")
    print(f"wrote {out}/search.json, chosen/, chosen-recipe.yaml, report.json, report.md and index.html")
    return 0
