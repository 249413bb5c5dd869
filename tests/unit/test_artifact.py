"""Artifact folders: round trip, checksum validation, atomic writes."""

import json

import pytest

from edgeopt.core.tensors import TensorSpec
from edgeopt.runtimes.artifact import load_artifact, write_artifact
from edgeopt.core.errors import InputError
from helpers import listing

IO = dict(inputs=[TensorSpec("x", [1, 4], "float32")], outputs=[TensorSpec("y", [1, 2], "float32")])


def _write(path, payload=b"model bytes", **kw):
    return write_artifact(path, lambda d: (d / "model.bin").write_bytes(payload), format="onnx",
                          files=["model.bin"], **IO, **kw)


def test_round_trip_keeps_manifest_fields(tmp_path):
    art = _write(tmp_path / "a", history=[{"name": "export", "config": {}, "metrics": {}}])
    again = load_artifact(tmp_path / "a")
    m = again.manifest
    assert m["format"] == "onnx" and m["files"] == ["model.bin"]
    assert m["io"]["inputs"][0] == {"name": "x", "shape": [1, 4], "dtype": "float32"}
    assert len(m["sha256"]["model.bin"]) == 64
    assert m["history"][0]["name"] == "export"
    assert again.inputs == art.inputs and again.size_bytes() == len(b"model bytes")


def test_changed_file_fails_checksum_with_file_named(tmp_path):
    _write(tmp_path / "a")
    (tmp_path / "a" / "model.bin").write_bytes(b"tampered")
    with pytest.raises(InputError, match="checksum of 'model.bin' does not match"):
        load_artifact(tmp_path / "a")


def test_missing_listed_file_is_named(tmp_path):
    _write(tmp_path / "a")
    (tmp_path / "a" / "model.bin").unlink()
    with pytest.raises(InputError, match="'model.bin' listed in the manifest is missing"):
        load_artifact(tmp_path / "a")


def test_manifest_with_other_schema_is_refused(tmp_path):
    _write(tmp_path / "a")
    mpath = tmp_path / "a" / "manifest.json"
    m = json.loads(mpath.read_text())
    m["schema"] = 99
    mpath.write_text(json.dumps(m))
    with pytest.raises(InputError, match="schema 99 is not supported"):
        load_artifact(tmp_path / "a")


def test_missing_artifact_and_non_artifact_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_artifact(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="not an artifact folder"):
        load_artifact(tmp_path / "plain")


def test_failed_writer_leaves_nothing(tmp_path):
    def fill(d):
        (d / "model.bin").write_bytes(b"half")
        raise KeyboardInterrupt  # an interrupted run

    with pytest.raises(KeyboardInterrupt):
        write_artifact(tmp_path / "a", fill, format="onnx", files=["model.bin"], **IO)
    assert listing(tmp_path) == []


def test_rewrite_replaces_old_artifact_and_refuses_foreign_folder(tmp_path):
    _write(tmp_path / "a", payload=b"one")
    _write(tmp_path / "a", payload=b"two")
    assert (tmp_path / "a" / "model.bin").read_bytes() == b"two"
    assert listing(tmp_path) == ["a", "a/manifest.json", "a/model.bin"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not an edgeopt artifact"):
        _write(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(InputError, match="format must be one of"):
        write_artifact(tmp_path / "a", lambda d: None, format="keras", files=[], **IO)
