"""``edgeopt run``: run a whole trade-off study from a recipe.

Run every variant of RECIPE on every target and write report.json, report.md, pareto.png and
index.html into --out. Progress is kept in state.json: re-running after an interrupt resumes without
redoing finished variants. A variant that fails is recorded in the report with its reason and the
study goes on (exit 3 at the end).
"""

from __future__ import annotations

from pathlib import Path

from .common import add_command, positive_int, refuse_existing_file_parent, say


def add_parser(sub):
    r = add_command(sub, __doc__, run)
    r.add_argument("recipe", metavar="RECIPE.yaml")
    r.add_argument("--out", default=None, help="output folder (default: build/<recipe name>)")
    r.add_argument("--nproc", type=positive_int, default=1, help="processes for distill steps (torchrun DDP; default 1)")
    return r


def run(args) -> int:
    from edgeopt.core.errors import InputError
    from edgeopt.pipeline.recipe import load_recipe
    from edgeopt.pipeline.run import run_recipe

    if Path(args.recipe).is_dir():
        raise InputError(f"recipe {args.recipe!r} is a folder; expected a recipe .yaml file")
    recipe = load_recipe(args.recipe)
    out = args.out or str(Path("build") / Path(args.recipe).stem)
    refuse_existing_file_parent(out)
    report = run_recipe(recipe, out, nproc=args.nproc)
    failed = [v for v in report["variants"] if v.get("status") == "failed"]
    print(f"wrote {out}/report.json, report.md, pareto.png and index.html")
    if failed:
        say(f"edgeopt run: {len(failed)} of {len(report['variants'])} variant/target pairs failed: "
            + "; ".join(f"{v['name']}/{v['runtime']}: {v['error']}" for v in failed))
        return 3
    return 0
