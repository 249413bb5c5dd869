"""benchmarks/RESULTS.md holds one section per question, and a benchmark's ``record`` rewrites its
own section in place instead of appending another."""

import importlib.util
import re

import pytest

from helpers import REPO


@pytest.fixture(scope="module")
def results():
    # benchmarks/ is a folder of scripts, not a package: load the module from its file
    spec = importlib.util.spec_from_file_location("benchmark_results", REPO / "benchmarks" / "results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recording_a_key_twice_keeps_one_section_with_the_new_body(results, tmp_path):
    path = tmp_path / "RESULTS.md"
    results.record("speed", "Is it fast?", "| ms |\n|---|\n| 1.0 |", path=path)
    results.record("parity", "Is it right?", "| error |\n|---|\n| 1e-7 |", path=path)
    results.record("speed", "Is it fast?", "| ms |\n|---|\n| 2.0 |", "measured twice", path=path)

    text = path.read_text()
    head, sections = results.split(text)
    assert [key for key, _ in sections] == ["speed", "parity"]
    speed = sections[0][1]
    assert "| 2.0 |" in speed and "measured twice" in speed and "| 1.0 |" not in text
    assert "| 1e-7 |" in sections[1][1]
    assert speed.count("## Is it fast?") == 1 and re.search(r"^Measured \d{4}-\d{2}-\d{2}\. CPU: ", speed, re.M)
    assert head.count("(#is-it-fast)") == 1 and head.count("(#is-it-right)") == 1


def test_a_new_key_is_appended_and_the_rest_of_the_file_is_kept(results, tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\nHand-written intro.\n\n<!-- index -->\n<!-- /index -->\n\n"
                    "<!-- results:old -->\n## An old question?\n\nCommand: `x`\n\nkept as written\n")
    results.record("new", "A new question?", "| a |\n|---|\n| 1 |", path=path)

    head, sections = results.split(path.read_text())
    assert "Hand-written intro." in head
    assert [key for key, _ in sections] == ["old", "new"]
    assert "kept as written" in sections[0][1]
    assert "- [An old question?](#an-old-question)\n- [A new question?](#a-new-question)\n" in head


def test_a_key_or_title_that_would_break_the_file_is_refused(results, tmp_path):
    with pytest.raises(ValueError, match="key"):
        results.record("Has Spaces", "Q?", "body", path=tmp_path / "R.md")
    with pytest.raises(ValueError, match="one line"):
        results.record("ok", "two\nlines", "body", path=tmp_path / "R.md")
    assert not (tmp_path / "R.md").exists()


def test_the_results_file_has_unique_keys_dated_sections_and_a_true_index(results):
    text = (REPO / "benchmarks" / "RESULTS.md").read_text()
    head, sections = results.split(text)
    keys = [key for key, _ in sections]
    assert len(keys) == len(set(keys)), "two sections share a key"
    for key, section in sections:
        assert re.search(r"^## .+\?$", section, re.M), f"{key}: the title states no question"
        assert "Command" in section, f"{key}: no command"
        assert re.search(r"^Measured \d{4}-\d{2}-\d{2}", section, re.M), f"{key}: no date"
    assert results.with_index(head, sections) == head, "the index does not list the sections as they are"
