"""benchmarks/RESULTS.md: one section per question, regenerated in place by the benchmark that
measures it.

Each section starts with a marker line ``<!-- results:KEY -->`` and runs to the next marker or
the end of the file. ``record(key, ...)`` rewrites the section with that key (the command line,
the date, the CPU and its load, a note and the body) and leaves every other section as it is; a
key not in the file yet is appended. The index at the top of the file, between ``<!-- index -->``
and ``<!-- /index -->``, is rebuilt from the sections' titles each time, so it lists exactly the
sections the file holds. Superseded figures are not kept: git holds the file's history.

Example (on a copy, so that the real file is not touched):
    >>> import tempfile, pathlib
    >>> from results import record
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "RESULTS.md"
    >>> record("demo", "Is it fast?", "| a |\\n|---|\\n| 1 |", path=path)  # doctest: +ELLIPSIS
    appended section 'demo' in ...
    >>> record("demo", "Is it fast?", "| a |\\n|---|\\n| 2 |", path=path)  # doctest: +ELLIPSIS
    replaced section 'demo' in ...
    >>> text = path.read_text()
    >>> text.count("<!-- results:demo -->"), "| 2 |" in text, "| 1 |" in text
    (1, True, False)
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
#: a section's first line; the key is what a benchmark passes to ``record``
MARKER = re.compile(r"^<!-- results:(\S+) -->$", re.M)
KEY = re.compile(r"[a-z0-9][a-z0-9._-]*")
INDEX_START, INDEX_END = "<!-- index -->", "<!-- /index -->"
HEADER = f"""# Benchmark results

{INDEX_START}
{INDEX_END}
"""
#: the instruction-set flags that decide which kernels run (oneDNN, MLAS, TVM's VNNI schedules)
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
              "amx_tile", "asimd")


def make_key(*parts: str) -> str:
    """A section key from parts such as a script's name and its model: lower case, joined by '-',
    any character a key cannot hold (``zoo:resnet18``'s colon) turned into '-'.

    >>> make_key("runtime-latency", "zoo:ResNet18")
    'runtime-latency-zoo-resnet18'
    """
    return re.sub(r"[^a-z0-9._-]+", "-", "-".join(parts).lower()).strip("-")


def machine_line() -> str:
    """The CPU a figure was measured on: model, logical CPUs, its SIMD flags and the load average.

    The load is read when the section is written, at the end of the run: on a shared machine it
    is what says whether the latencies above it can be compared with a quiet run's.
    """
    from edgeopt.runtimes.cpu_features import host_flags
    from edgeopt.runtimes.fingerprint import cpu_model

    flags = host_flags() or set()
    simd = [f for f in SIMD_FLAGS if f in flags]
    if "avx512f" in flags and "amx_tile" not in flags:
        simd.append("no amx")
    try:
        load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "unknown"
    return (f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs, flags {' '.join(simd) or 'not listed'}; "
            f"load average (1 / 5 / 15 min) when recorded: {load}")


def section(key: str, title: str, body: str, note: str = "") -> str:
    """The text of one section: marker, ``## title``, command, date, machine, note, body."""
    if not KEY.fullmatch(key):
        raise ValueError(f"results key {key!r}: use lower-case letters, digits, '.', '_' and '-'")
    if "\n" in title:
        raise ValueError(f"results title {title!r} spans lines; a title is one line")
    # the script as run from the repository root (benchmarks/real_models/ holds scripts too)
    script, root = Path(sys.argv[0]).resolve(), RESULTS.resolve().parent.parent
    shown = script.relative_to(root).as_posix() if script.is_relative_to(root / "benchmarks") \
        else f"benchmarks/{script.name}"
    command = " ".join([".venv/bin/python", shown] + [shlex.quote(a) for a in sys.argv[1:]])
    return (f"<!-- results:{key} -->\n## {title}\n\n"
            f"Command: `{command}`\n\n"
            f"Measured {dt.date.today().isoformat()}. {machine_line()}.\n\n"
            + (f"{note.rstrip()}\n\n" if note else "") + body.strip("\n") + "\n\n")


def split(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The text before the first section, and every section as (key, text), in file order."""
    marks = list(MARKER.finditer(text))
    if not marks:
        return text, []
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return text[:marks[0].start()], [(m.group(1), text[m.start():end]) for m, end in zip(marks, ends)]


def slug(title: str, seen: dict[str, int]) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    base = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
    n = seen.get(base, 0)
    seen[base] = n + 1
    return base if n == 0 else f"{base}-{n}"


def with_index(head: str, sections: list[tuple[str, str]]) -> str:
    """``head`` with the lines between the index markers replaced by a link to every section."""
    if INDEX_START not in head or INDEX_END not in head:
        head = head.rstrip("\n") + f"\n\n{INDEX_START}\n{INDEX_END}\n"
    seen: dict[str, int] = {}
    lines = []
    for _, text in sections:
        title = re.search(r"^## (.+)$", text, re.M)
        if title:
            lines.append(f"- [{title.group(1)}](#{slug(title.group(1), seen)})")
    before, rest = head.split(INDEX_START, 1)
    after = rest.split(INDEX_END, 1)[1]
    return before + INDEX_START + "\n" + "".join(line + "\n" for line in lines) + INDEX_END + after


def record(key: str, title: str, body: str, note: str = "", *, path: Path = RESULTS) -> None:
    """Write the section ``key`` of ``path`` (RESULTS.md): replaced in place when the file has
    it, appended when it does not; the index is rebuilt. ``title`` states the question the
    section answers, ``note`` the caveats that still apply to ``body`` (the table)."""
    new = section(key, title, body, note)
    head, sections = split(path.read_text() if path.exists() else HEADER)
    if any(k == key for k, _ in sections):
        sections = [(k, new if k == key else text) for k, text in sections]
        verb = "replaced"
    else:
        if sections and not sections[-1][1].endswith("\n\n"):
            sections[-1] = (sections[-1][0], sections[-1][1].rstrip("\n") + "\n\n")
        sections.append((key, new))
        verb = "appended"
    text = with_index(head, sections) + "".join(t for _, t in sections)
    path.write_text(text.rstrip("\n") + "\n")
    print(f"{verb} section {key!r} in {path}")
