"""torch -> ONNX export with the parity check."""

import numpy as np
import onnx
import pytest
import torch

from edgeopt.compile import ExportConfig, export
from edgeopt.pipeline.zoo import ZOO, create
from edgeopt.core.errors import InputError, ParityError
from helpers import drifting_model, example_inputs, listing, tiny_conv_net, unexportable


def test_export_file_passes_checker_and_parity(tmp_path):
    result = export(tiny_conv_net(), ExportConfig(), example_inputs(), out=tmp_path / "m.onnx",
                    check_inputs=[example_inputs(seed=s) for s in range(1, 4)])
    model = onnx.load(str(result.path))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version >= 17
    parity = result.metrics["parity"]
    assert parity["passed"] is True and parity["n_inputs"] == 4 and parity["max_rel"] <= 1e-4
    assert listing(tmp_path) == ["m.onnx"]


def test_export_folder_is_an_artifact_with_history(tmp_path):
    result = export(tiny_conv_net(), ExportConfig(), example_inputs(), out=tmp_path / "art")
    assert result.artifact.format == "onnx"
    assert result.artifact.history[-1]["name"] == "export"
    assert result.artifact.inputs[0].shape == [1, 1, 8, 8]


def test_dynamic_batch_runs_any_batch(tmp_path):
    import onnxruntime as ort

    result = export(tiny_conv_net(), ExportConfig(dynamic_batch=True), example_inputs(), out=tmp_path / "d.onnx")
    from edgeopt.runtimes.onnx_file import load_onnx, onnx_io

    assert isinstance(onnx_io(load_onnx(result.path))[0][0].shape[0], str)
    sess = ort.InferenceSession(str(result.path))
    x = example_inputs((5, 1, 8, 8))
    out = sess.run(None, {"input": x})[0]
    with torch.inference_mode():
        ref = tiny_conv_net()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_export_parity(name, tmp_path):
    entry = ZOO[name]
    model = create(name)
    x = example_inputs(entry.input_shape)
    result = export(model, ExportConfig(), x, out=tmp_path / f"{name}.onnx",
                    check_inputs=[example_inputs(entry.input_shape, seed=1)])
    parity = result.metrics["parity"]
    print(f"{name}: max abs {parity['max_abs']:.3e}, max rel {parity['max_rel']:.3e}")
    assert parity["max_rel"] <= 1e-4


def test_unexportable_op_is_named_and_nothing_written(tmp_path):
    with pytest.raises(InputError) as e:
        export(unexportable(), ExportConfig(), example_inputs((1, 1, 4, 4)), out=tmp_path / "u.onnx")
    msg = str(e.value)
    assert "linalg_eig" in msg and "'inner'" in msg and "EigInner" in msg
    assert listing(tmp_path) == []


def test_wrong_input_shape_is_reported_and_nothing_written(tmp_path):
    with pytest.raises(InputError, match=r"rejects input\(s\) of shape \(1, 3, 8, 8\)"):
        export(tiny_conv_net(), ExportConfig(), example_inputs((1, 3, 8, 8)), out=tmp_path / "s.onnx")
    assert listing(tmp_path) == []


def test_parity_failure_raises_and_writes_nothing(tmp_path):
    with pytest.raises(ParityError, match="max relative error"):
        export(drifting_model(), ExportConfig(), example_inputs((1, 4)), out=tmp_path / "p.onnx")
    assert listing(tmp_path) == []


def test_config_validation():
    with pytest.raises(ValueError, match="opset must be an integer >= 17, got 11"):
        ExportConfig(opset=11)
    with pytest.raises(ValueError, match="rtol must be a positive number"):
        ExportConfig(rtol=0)
