"""The built-in demo: the Fashion-MNIST trade-off study of ``benchmarks/fashion.yaml``.

Where Fashion-MNIST is not installed (the Debian package ``dataset-fashion-mnist``, which
``make data`` installs), the demo says so and runs the digits study of ``benchmarks/digits.yaml``
instead. Both recipes are kept here too (``DEMO_RECIPE``, ``DIGITS_RECIPE``) so that an
installed edgeopt runs the demo without the repository; a test checks that the copies match.

Example:
    >>> from edgeopt.pipeline.demo import run_demo  # doctest: +SKIP
    >>> report = run_demo(out="build/demo", repeat=50)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import time

from .recipe import parse_recipe
from .run import run_recipe


def _study(about: str, model: str, task: str, train: str, distill: str) -> str:
    """The demo's study, the same five variants and three runtimes for either dataset."""
    return f"""\
{about}model: {model}
task: {task}
{train}variants:
  fp32: []
  lowrank+kd:
    - lowrank: {{energy: 0.97, energy_on: responses}}
    - distill: {distill}
  pruned+kd:
    - prune: {{amount: 0.5, scope: local}}
    - distill: {distill}
  int8:
    - quantize: {{method: entropy, per_channel: true}}
  pruned+kd+int8:
    - prune: {{amount: 0.5, scope: local}}
    - distill: {distill}
    - quantize: {{method: entropy, per_channel: true}}
targets:
  - runtime: torch
  - runtime: onnxruntime
  - runtime: tvm
    target: cpu
bench: {{warmup: 10, repeat: 100}}
"""


DEMO_RECIPE = _study(
    "# The built-in default study: `edgeopt demo` (and `make demo`) runs exactly this recipe.\n"
    "# Fashion-MNIST (Debian package dataset-fashion-mnist, `make data`): 54,744 training images,\n"
    "# the official 10,000 test images. Four epochs train fashion_cnn to 91.38% top-1 (seed 0).\n",
    "zoo:fashion_cnn", "fashion_mnist", "train: {epochs: 4, batch_size: 128, shift: 0}\n",
    "{epochs: 2, batch_size: 128, patience: null}")

DIGITS_RECIPE = _study(
    "# The built-in study where Fashion-MNIST is not installed: `edgeopt demo` then runs this recipe.\n",
    "zoo:digits_cnn", "digits", "", "{epochs: 10, shift: 2, patience: null}")


def demo_recipe(data_dir: str | os.PathLike | None = None) -> tuple[str, str | None]:
    """The recipe text the demo runs and, when it falls back to digits, the reason why."""
    from edgeopt.core.errors import InputError

    from .tasks import check_task_spec

    try:
        check_task_spec("fashion_mnist", data_dir=data_dir)
    except InputError as e:
        return DIGITS_RECIPE, f"{e}. Running the digits study instead."
    return DEMO_RECIPE, None


def with_installed_peers(recipe):
    """The built-in study measures OpenVINO too where its package is installed (the optional
    ``openvino`` extra): the question the report answers is which runtime to ship."""
    import importlib.util

    from .recipe import Target

    if importlib.util.find_spec("openvino") is None or any(t.runtime == "openvino" for t in recipe.targets):
        return recipe
    print("note: OpenVINO is installed: the study measures it beside torch, onnxruntime and TVM")
    return dataclasses.replace(recipe, targets=[*recipe.targets, Target("openvino")])


def run_demo(out: str | os.PathLike = "build/demo", threads: int | None = None,
             warmup: int | None = None, repeat: int | None = None, recipe: str | None = None) -> dict:
    """Run the demo study into ``out``; print the table; return the report.

    ``recipe``: recipe text to run instead of the default (Fashion-MNIST, else digits).
    """
    t0 = time.perf_counter()
    built_in = recipe is None
    if built_in:
        recipe, note = demo_recipe()
        if note:
            print(f"note: {note}")
    recipe = parse_recipe(recipe, "<built-in demo recipe>")
    if built_in:
        recipe = with_installed_peers(recipe)
    bench = dict(recipe.bench)
    for key, value in (("threads", threads), ("warmup", warmup), ("repeat", repeat)):
        if value is not None:
            bench[key] = value
    recipe = dataclasses.replace(recipe, bench=bench)
    report = run_recipe(recipe, out)
    fp32 = [v for v in report["variants"] if v["name"] == "fp32" and v.get("predictions_sha256")]
    # a runtime that chose a reduced precision by itself (OpenVINO's bf16) is not expected to
    # give the same predictions: its agreement is in the table
    reduced = [v for v in fp32 if str(v.get("target", "")).endswith(("/bf16", "/f16"))]
    exact = [v for v in fp32 if v not in reduced]
    same = len({v["predictions_sha256"] for v in exact}) == 1
    print()
    print(f"fp32 top-1 predictions identical across {', '.join(v['runtime'] for v in exact)}: "
          + ("yes" if same else "NO")
          + "".join(f"; {v['runtime']} ran {v['target'].rsplit('/', 1)[1]}: {v['agreement'] * 100:.2f}% agreement"
                    for v in reduced if v.get("agreement") is not None))
    print(f"wrote report.json, report.md, pareto.png and index.html in {out} "
          f"in {time.perf_counter() - t0:.0f} s")
    return report
