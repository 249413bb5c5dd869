"""The config contract over the whole registry: every registered step rejects a wrongly typed
value of each of its plain fields, naming the field, through the Python API, through a recipe
(``edgeopt run``, exit 2) and through the step's command-line options (exit 2).

Nothing here trains or builds: validation fails before any work starts.
"""

from __future__ import annotations

import json

import pytest

from edgeopt.core.config import field_kinds, flat_fields
from edgeopt.core.errors import InputError
from edgeopt.pipeline.cli import main
from edgeopt.pipeline.steps import STEPS, make_config

#: Values that make each step's config valid, so that only the field under test is wrong.
BASE = {"lowrank": {"energy": 0.9}, "prune": {"amount": 0.5}, "distill": {"epochs": 1}}
#: A value of the wrong type for a field of each plain kind.
WRONG = {"float": "x", "int": "x", "bool": "yes", "str": 3, "tuple": 3, "dict": 3}
#: The command line of each step that has one, before its options.
CLI = {"lowrank": ["compress", "lowrank", "zoo:digits_cnn"], "prune": ["compress", "prune", "zoo:digits_cnn"],
       "quantize": ["compress", "quantize", "m.onnx"], "qat": ["compress", "qat", "zoo:digits_cnn", "--task", "digits"],
       "export": ["export", "zoo:digits_cnn"], "compile": ["compile", "m.onnx"]}


def _plain_fields():
    for step, kind in STEPS.items():
        for name, f in flat_fields(kind.config):
            kinds, _ = field_kinds(f.type)
            if kinds and all(k in WRONG for k in kinds):
                yield step, name, kinds


CASES = [pytest.param(step, name, kinds, id=f"{step}.{name}") for step, name, kinds in _plain_fields()]


def _wrong(kinds):
    # a string for a field that takes a string is no error: give it a number instead
    return WRONG[kinds[0]] if "str" not in kinds else 3


def test_every_registered_step_is_covered():
    assert {step for step, _, _ in _plain_fields()} == set(STEPS)


@pytest.mark.parametrize("step, name, kinds", CASES)
def test_api_rejects_a_wrongly_typed_field(step, name, kinds):
    with pytest.raises(InputError, match=rf"^{name} must be "):
        make_config(step, {**BASE.get(step, {}), name: _wrong(kinds)})


def _run(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    return code, err


@pytest.mark.parametrize("step, name, kinds", [c for c in CASES if STEPS[c.values[0]].in_variants
                                               or c.values[0] == "compile"])
def test_recipe_rejects_a_wrongly_typed_field(step, name, kinds, tmp_path, capsys):
    value = json.dumps(_wrong(kinds))  # JSON is YAML
    if step == "compile":  # a tvm target's keys are compile's fields
        variants, target = "{fp32: []}", f"{{runtime: tvm, {name}: {value}}}"
    else:
        params = ", ".join(f"{k}: {json.dumps(v)}" for k, v in {**BASE.get(step, {}), name: None}.items()
                           if k != name)
        variants = f"{{v: [{{{step}: {{{params}{', ' if params else ''}{name}: {value}}}}}]}}"
        target = "{runtime: onnxruntime}"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: zoo:digits_cnn\ntask: digits\nvariants: {variants}\ntargets: [{target}]\n")
    code, err = _run(["run", recipe, "--out", tmp_path / "out"], capsys)
    assert code == 2 and len(err) == 1, err
    assert f"{name} must be " in err[0], err[0]
    assert not (tmp_path / "out").exists()


def _cli_value(kinds):
    """A command-line text of the wrong type, or None where every text is of the right type
    (a string option; a bool is a flag without a value)."""
    if kinds[0] in ("float", "int"):
        return "x"
    return None


@pytest.mark.parametrize("step, name, kinds", [c for c in CASES if c.values[0] in CLI
                                               and _cli_value(c.values[2]) is not None])
def test_cli_rejects_a_wrongly_typed_option(step, name, kinds, tmp_path, capsys):
    flag = "--" + name.replace("_", "-")
    base = [f"--{k.replace('_', '-')}={v}" for k, v in BASE.get(step, {}).items() if k != name]
    code, err = _run([*CLI[step], "--out", tmp_path / "out", *base, flag, _cli_value(kinds)], capsys)
    assert code == 2, err
    assert flag in err[-1] and "invalid" in err[-1], err[-1]


def test_cli_rejects_a_list_of_the_wrong_items(tmp_path, capsys):
    code, err = _run(["compress", "lowrank", "zoo:digits_cnn", "--out", tmp_path / "out", "--energy", "0.9",
                      "--candidates", "a,b"], capsys)
    assert code == 2 and len(err) == 1 and "candidates must be a list of numbers" in err[0], err


@pytest.mark.parametrize("step", sorted(STEPS))
def test_every_step_describes_its_record_through_the_registry(step):
    from edgeopt.pipeline.report_steps import describe_record

    phrases = STEPS[step].describe({}, {})
    assert isinstance(phrases, list) and all(isinstance(p, str) for p in phrases)
    line = describe_record({"name": step, "metrics": {"params_before": 10, "params_after": 5}})
    assert line == "; ".join([f"{step}: params 10 -> 5 (-50%)", *phrases])
