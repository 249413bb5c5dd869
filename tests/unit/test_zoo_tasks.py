"""Model zoo and the digits task."""

import numpy as np
import pytest
import torch

from edgeopt.compress import count_params, onnx_flops
from edgeopt.pipeline.tasks import TrainConfig, load_task, train
from edgeopt.runtimes.torch_runner import torch_outputs
from edgeopt.pipeline.zoo import ZOO, create
from edgeopt.core.errors import InputError


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_models_build_and_run(name):
    entry = ZOO[name]
    model = create(name)
    with torch.inference_mode():
        out = model(torch.zeros(entry.input_shape))
    assert out.shape == (entry.input_shape[0], entry.num_classes)
    assert not model.training


def test_zoo_is_seeded_and_rejects_unknown_names():
    a, b = create("digits_cnn", seed=3), create("digits_cnn", seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(InputError, match="unknown zoo model 'vgg'"):
        create("vgg")


def test_reference_model_sizes():
    # Same parameter counts as the published architectures (torchvision's layouts).
    assert count_params(create("resnet18")) == 11_689_512
    assert count_params(create("mobilenetv2")) == 3_504_872


def test_digits_splits_are_fixed_and_disjoint():
    t1, t2 = load_task("digits"), load_task("digits")
    assert (len(t1.train), len(t1.val), len(t1.calib), len(t1.test)) == (1129, 180, 128, 360)
    assert np.array_equal(t1.test.x, t2.test.x) and np.array_equal(t1.train.y, t2.train.y)
    assert t1.test.x.shape[1:] == (1, 32, 32) and t1.test.x.dtype == np.float32
    rows = {s: {r.tobytes() for r in getattr(t1, s).x} for s in ("train", "val", "calib", "test")}
    assert not rows["train"] & rows["test"] and not rows["calib"] & rows["test"]
    with pytest.raises(InputError, match="unknown task 'mnist'"):
        load_task("mnist")


@pytest.mark.slow  # 12 epochs of training; the runner's tests train small models on every run
def test_digits_training_reaches_97_percent():
    task = load_task("digits")
    model = train(create("digits_cnn"), task, TrainConfig(), progress=False)
    acc = task.score(torch_outputs(model, task.test.x)[0])
    assert acc >= 0.97, acc


def test_train_config_validation():
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        TrainConfig(epochs=0)


def test_onnx_flops_counts_conv_and_gemm(tmp_path):
    from edgeopt.compile import ExportConfig, export

    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 5 * 5, 7)).eval()
    path = export(model, ExportConfig(), np.zeros((1, 2, 5, 5), np.float32), out=tmp_path / "f.onnx").path
    conv = 2 * (4 * 5 * 5) * (2 * 3 * 3)
    fc = 2 * 7 * 100
    assert onnx_flops(path) == conv + fc
