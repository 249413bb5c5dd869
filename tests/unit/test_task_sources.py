"""Tasks as a plug-in point: factories, .npz files, image folders, Fashion-MNIST, metrics."""

import sys
import textwrap

import numpy as np
import pytest

from edgeopt.core.errors import InputError
from edgeopt.pipeline.tasks import (FASHION_MNIST_PACKAGE, Split, check_task_spec, fashion_mnist_files,
                                    load_task)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """Writes a module of task factories into tmp_path and puts it on sys.path."""
    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        sys.modules.pop(name, None)
        return name

    monkeypatch.syspath_prepend(str(tmp_path))
    return write


FACTORIES = """
    import numpy as np
    import torch
    from edgeopt.pipeline.task_sources import TaskData

    rng = np.random.default_rng(0)

    def xy(n):
        return rng.standard_normal((n, 2, 4), dtype=np.float32), rng.integers(0, 3, n)

    def classification(seed=0):
        return TaskData(train=xy(50), calib=xy(8)[0], test=xy(12), val=xy(6), name="toy")

    def as_dict():
        return {"train": xy(30), "calib": xy(4)[0], "test": xy(10)}

    def loaders():
        ds = torch.utils.data.TensorDataset(torch.randn(20, 2, 4), torch.randint(0, 3, (20,)))
        return TaskData(train=torch.utils.data.DataLoader(ds, batch_size=6), calib=ds,
                        test=[(torch.randn(5, 2, 4), torch.randint(0, 3, (5,))) for _ in range(2)])

    def regression(input_shape=None):
        x = rng.standard_normal((40, 3), dtype=np.float32)
        return TaskData(train=(x, x.sum(1, keepdims=True)), calib=x[:4], test=(x[:10], x[:10, :1]),
                        metric="mae")

    def embeddings():
        x = rng.standard_normal((20, 8), dtype=np.float32)
        return TaskData(train=x, calib=x[:4], test=(x[:6], x[:6] * 2), metric="cosine")

    def needs_args(path):
        return None

    def raises():
        raise RuntimeError("dataset server unreachable\\nsecond line")

    def wrong_type():
        return [1, 2, 3]

    def bad_metric():
        return TaskData(train=xy(20), calib=xy(4)[0], test=xy(5), metric="f1")

    not_callable = 3
"""


def test_factory_task_with_arrays_dicts_and_loaders(plugin):
    mod = plugin("edgeopt_test_tasks", FACTORIES)
    task = load_task(f"{mod}:classification", seed=1)
    assert (task.name, task.metric, task.num_classes, task.input_shape) == ("toy", "top1", 3, (1, 2, 4))
    assert [len(getattr(task, s)) for s in ("train", "val", "calib", "test")] == [50, 6, 8, 12]
    assert task.calib.y is None and task.test.y.dtype == np.int64
    assert task.score(np.eye(3)[task.test.y]) == 1.0

    task = load_task(f"{mod}:as_dict")  # no val: 10% of train is carved out, seeded
    assert (len(task.train), len(task.val), len(task.calib)) == (27, 3, 4)
    rows = {r.tobytes() for r in task.train.x}
    assert not rows & {r.tobytes() for r in task.val.x}

    task = load_task(f"{mod}:loaders")
    assert task.train.x.shape == (18, 2, 4) and len(task.val) == 2  # 20 batched samples, 2 carved
    assert task.calib.x.shape == (20, 2, 4) and task.test.y.shape == (10,)
    check_task_spec(f"{mod}:loaders")


def test_regression_and_embedding_metrics(plugin):
    mod = plugin("edgeopt_test_tasks_metrics", FACTORIES)
    task = load_task(f"{mod}:regression", input_shape=(1, 3))
    assert task.metric == "mae" and not task.higher_is_better and task.num_classes == 0
    assert task.score(task.test.y) == 0.0
    assert task.score(task.test.y + 0.5) == pytest.approx(0.5)
    assert task.agreement(task.test.y + 1, task.test.y) == pytest.approx(1.0)

    task = load_task(f"{mod}:embeddings")
    assert task.metric == "cosine" and task.higher_is_better
    assert task.score(task.test.x) == pytest.approx(1.0)  # y = 2x: same direction
    assert task.score(-task.test.x) == pytest.approx(-1.0)
    assert task.agreement(task.test.x, task.test.x * 3) == pytest.approx(1.0)


@pytest.mark.parametrize("factory, message", [
    ("needs_args", r"needs argument\(s\) path; a factory must be callable without arguments \(it may take seed"),
    ("raises", r"raised RuntimeError: dataset server unreachable$"),
    ("wrong_type", "returned list; expected TaskData"),
    ("bad_metric", "unknown metric 'f1'"),
    ("not_callable", "'not_callable' is not callable"),
    ("missing", "has no attribute 'missing'"),
])
def test_factory_errors_are_one_line_input_errors(plugin, factory, message):
    mod = plugin(f"edgeopt_test_tasks_{factory}", FACTORIES)
    with pytest.raises(InputError, match=message) as info:
        load_task(f"{mod}:{factory}")
    assert "\n" not in str(info.value) and f"{mod}:{factory}" in str(info.value)
    # No chained traceback: the user sees one line.
    assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)


def test_check_task_spec_validates_without_calling(plugin):
    mod = plugin("edgeopt_test_tasks_check", FACTORIES)
    check_task_spec(f"{mod}:raises")  # callable without arguments: fine until it is called
    with pytest.raises(InputError, match="needs argument"):
        check_task_spec(f"{mod}:needs_args")
    with pytest.raises(InputError, match="cannot import module 'no_such_module_xyz'"):
        check_task_spec("no_such_module_xyz:make")
    with pytest.raises(InputError, match="unknown task 'mnist'"):
        check_task_spec("mnist")
    check_task_spec("digits")
    check_task_spec("random")


def test_npz_labelled_split_is_seeded_stratified_and_disjoint(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 6, 6)).astype(np.float32)
    y = np.repeat(np.arange(4), 50)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    task = load_task(str(tmp_path / "d.npz"), seed=3, input_shape=(1, 1, 6, 6))
    assert task.metric == "top1" and task.num_classes == 4 and task.name == "d"
    assert task.test.x.shape == (40, 1, 6, 6)  # channel axis added for the model
    assert [len(getattr(task, s)) for s in ("train", "val", "calib", "test")] == [120, 20, 20, 40]
    assert np.bincount(task.test.y).tolist() == [10, 10, 10, 10]
    all_rows = [r.tobytes() for s in ("train", "val", "calib", "test") for r in getattr(task, s).x]
    assert len(set(all_rows)) == 200
    again = load_task(str(tmp_path / "d.npz"), seed=3, input_shape=(1, 1, 6, 6))
    assert np.array_equal(again.test.x, task.test.x)
    other = load_task(str(tmp_path / "d.npz"), seed=4, input_shape=(1, 1, 6, 6))
    assert not np.array_equal(other.test.x, task.test.x)


def test_npz_unlabelled_is_agreement_only(tmp_path):
    np.savez(tmp_path / "u.npz", x=np.ones((10, 3), np.float32))
    task = load_task(str(tmp_path / "u.npz"))
    assert task.metric == "agreement" and not task.labelled and len(task.test) == 2
    with pytest.raises(InputError, match="has no labels"):
        task.score(task.test.x)
    np.savez(tmp_path / "a.npz", x=np.ones((10, 3), np.float32), y=np.arange(10), metric="agreement")
    assert not load_task(str(tmp_path / "a.npz")).labelled  # targets ignored when asked to
    logits = np.array([[1, 0], [0, 1]], np.float32)
    assert task.agreement(logits, logits[::-1]) == 0.0


@pytest.mark.parametrize("arrays, message", [
    ({"images": np.zeros((5, 2))}, r"has arrays \['images'\]; expected x"),
    ({"x": np.zeros((5, 2)), "y": np.zeros(4, np.int64)}, "5 inputs but 4 targets"),
    ({"x": np.zeros((3, 2))}, "at least 4 are needed"),
])
def test_npz_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError, match=message):
        load_task(str(tmp_path / "bad.npz"))


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        check_task_spec(str(tmp_path / "nope.npz"))
    with pytest.raises(InputError, match="does not exist"):
        check_task_spec(str(tmp_path / "nope"))
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(InputError, match="unknown data file type"):
        check_task_spec(str(tmp_path / "data.csv"))


def _image_folder(root, size=(10, 12), per_class=12, mode="RGB"):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(("cat", "dog", "owl")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            shape = size + ((3,) if mode == "RGB" else ())
            pixels = np.clip(rng.normal(60 + 60 * c, 20, shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode=mode).save(root / name / f"{i}.png")
    return root


def test_image_folder_with_preprocessing(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    task = load_task(str(root), input_shape=(1, 3, 8, 8))  # size and channels from the model
    assert task.classes == ("cat", "dog", "owl") and task.num_classes == 3
    assert task.test.x.shape[1:] == (3, 8, 8) and sum(len(getattr(task, s)) for s in
                                                      ("train", "val", "calib", "test")) == 36
    # Normalised with the training split's statistics.
    assert abs(float(task.train.x.mean())) < 1e-4
    task = load_task(str(root), preprocess={"size": 6, "channels": 1, "mean": 0.5, "std": 0.25})
    assert task.test.x.shape[1:] == (1, 6, 6)
    # The class means differ: the labels are learnable from the pixels.
    means = [task.train.x[task.train.y == c].mean() for c in range(3)]
    assert means[0] < means[1] < means[2]
    (root / "preprocess.yaml").write_text("size: [5, 7]\nchannels: 3\n")
    assert load_task(str(root)).test.x.shape[1:] == (3, 5, 7)
    (root / "preprocess.yaml").write_text("size: 5\ncolour: red\n")
    with pytest.raises(InputError, match=r"unknown preprocess key\(s\) \['colour'\]"):
        check_task_spec(str(root))


def test_image_folder_layout_errors(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    (root / "a.png").write_bytes(b"")
    with pytest.raises(InputError, match="has 0 class sub-folder"):
        check_task_spec(str(root))
    (root / "cat").mkdir()
    (root / "dog").mkdir()
    (root / "dog" / "x.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"class folder\(s\) \['cat'\] hold no image"):
        check_task_spec(str(root))
    (root / "cat" / "y.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot read image"):
        load_task(str(root))


def test_random_task_splits_have_a_length():
    task = load_task("random", input_shape=(1, 3, 4, 4))
    assert (len(task.train), len(task.val), len(task.calib), len(task.test)) == (128, 32, 16, 32)
    assert len(Split(np.zeros((5, 2)), None)) == 5


def test_limit_caps_every_split():
    task = load_task("random", input_shape=(1, 4), limit=20)
    assert [len(getattr(task, s)) for s in ("train", "val", "calib", "test")] == [20, 20, 16, 20]
    with pytest.raises(InputError, match="limit must be an integer >= 1"):
        load_task("digits", limit=0)


def test_fashion_mnist_missing_names_the_package(tmp_path):
    with pytest.raises(InputError, match=f"install the Debian package {FASHION_MNIST_PACKAGE}"):
        check_task_spec("fashion_mnist", data_dir=tmp_path)
    with pytest.raises(InputError, match="missing train-images-idx3-ubyte.gz"):
        load_task("fashion_mnist", data_dir=tmp_path)


def test_idx_reader_checks_the_header(tmp_path):
    import gzip

    from edgeopt.pipeline.tasks import read_idx

    header = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + (4).to_bytes(4, "big")
    with gzip.open(tmp_path / "ok-idx3-ubyte.gz", "wb") as f:
        f.write(header + bytes(range(24)))
    a = read_idx(tmp_path / "ok-idx3-ubyte.gz")
    assert a.shape == (2, 3, 4) and a[1, 2, 3] == 23
    assert read_idx(tmp_path / "ok-idx3-ubyte.gz", 1).shape == (1, 3, 4)  # a prefix only
    (tmp_path / "short").write_bytes(header + bytes(5))
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_idx(tmp_path / "short")
    (tmp_path / "float").write_bytes(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + bytes(4))
    with pytest.raises(InputError, match="bad magic number"):
        read_idx(tmp_path / "float")


def _fashion_installed() -> bool:
    try:
        fashion_mnist_files()
        return True
    except InputError:
        return False


@pytest.mark.skipif(not _fashion_installed(),
                    reason=f"Fashion-MNIST is not installed (Debian package {FASHION_MNIST_PACKAGE}, `make data`)")
def test_fashion_mnist_subset():
    task = load_task("fashion_mnist", limit=100)
    assert task.input_shape == (1, 1, 28, 28) and task.model == "fashion_cnn"
    assert task.classes[9] == "Ankle boot" and task.num_classes == 10
    assert [len(getattr(task, s)) for s in ("train", "val", "calib", "test")] == [100, 75, 75, 100]
    assert task.test.x.dtype == np.float32 and task.test.y.dtype == np.int64
    assert set(np.unique(task.test.y)) <= set(range(10))
    rows = {r.tobytes() for r in task.train.x}
    assert not rows & {r.tobytes() for r in task.val.x}
    check_task_spec("fashion_mnist")
