"""MODEL = factory + state dict file; input shape resolution in load_model."""

import pytest
import torch

from edgeopt.core.errors import InputError
from edgeopt.pipeline.models import load_model
from helpers import TinyConvNet


def test_zoo_model_takes_a_state_dict(tmp_path):
    trained = load_model("zoo:digits_cnn", seed=5).module
    torch.save(trained.state_dict(), tmp_path / "w.pth")
    m = load_model("zoo:digits_cnn", seed=0, weights=tmp_path / "w.pth")
    for (k, a), b in zip(trained.state_dict().items(), m.module.state_dict().values()):
        assert torch.equal(a, b), k
    assert m.input_shape == (1, 1, 32, 32) and str(tmp_path / "w.pth") in m.source
    # A training checkpoint that nests the state dict, saved from DataParallel: also accepted.
    nested = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}}
    torch.save(nested, tmp_path / "ckpt.pt")
    m2 = load_model("zoo:digits_cnn", weights=tmp_path / "ckpt.pt")
    assert torch.equal(m2.module.classifier[3].weight, trained.classifier[3].weight)


def test_factory_model_takes_weights_and_its_own_input_shape(tmp_path):
    net = TinyConvNet()
    with torch.no_grad():
        net.fc.bias.fill_(7.0)
    torch.save(net.state_dict(), tmp_path / "tiny.pt")
    m = load_model("helpers:tiny_conv_net", weights=str(tmp_path / "tiny.pt"))
    assert torch.all(m.module.fc.bias == 7.0)
    assert m.input_shape == (1, 1, 8, 8)  # the module's input_shape attribute
    assert load_model("helpers:tiny_conv_net", input_shape="2,1,8,8").input_shape == (2, 1, 8, 8)
    assert load_model("zoo:resnet18", input_shape=(1, 3, 64, 64)).input_shape == (1, 3, 64, 64)
    assert load_model("zoo:tiny_vit").input_shape == (1, 3, 32, 32)  # the zoo entry
    with pytest.raises(InputError, match="must have positive dimensions"):
        load_model("zoo:digits_cnn", input_shape="1,0,3")


def test_full_pickles_are_refused(tmp_path):
    torch.save(TinyConvNet(), tmp_path / "module.pth")  # a whole pickled module, not a state dict
    with pytest.raises(InputError, match=r"needs full unpickling \(it holds a helpers.TinyConvNet object\), which edgeopt refuses; save only the tensors"):
        load_model("helpers:tiny_conv_net", weights=tmp_path / "module.pth")
    with pytest.raises(InputError, match="looks like a pickle"):
        load_model(str(tmp_path / "module.pth"))
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(InputError, match="is not a torch state dict file"):
        load_model("helpers:tiny_conv_net", weights=tmp_path / "junk.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(InputError, match="holds list, not a state dict"):
        load_model("helpers:tiny_conv_net", weights=tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model("zoo:digits_cnn", weights=tmp_path / "none.pth")


def test_mismatched_state_dicts_name_the_keys_and_shapes(tmp_path):
    state = TinyConvNet().state_dict()
    bad = dict(state)
    del bad["fc.weight"]
    bad["head.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "keys.pt")
    with pytest.raises(InputError, match=r"does not match TinyConvNet: missing keys 'fc.weight'; "
                                         r"unexpected keys 'head.weight'"):
        load_model("helpers:tiny_conv_net", weights=tmp_path / "keys.pt")
    shaped = dict(state, **{"conv.weight": torch.zeros(8, 1, 3, 3)})
    torch.save(shaped, tmp_path / "shape.pt")
    with pytest.raises(InputError, match=r"'conv.weight' has shape \(8, 1, 3, 3\) in the file, "
                                         r"\(4, 1, 3, 3\) in the model"):
        load_model("helpers:tiny_conv_net", weights=tmp_path / "shape.pt")
