"""Appending a measured section to benchmarks/RESULTS.md (title, date, command, body)."""

from __future__ import annotations

import datetime as dt
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def record(title: str, body: str, note: str = "") -> None:
    """Append ``## title (date)``, the command line that produced it, a note and the body."""
    script = Path(sys.argv[0]).name
    args = " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = (f"\n## {title} ({dt.date.today().isoformat()})\n\n"
            f"Command: `.venv/bin/python benchmarks/{script} {args}`\n\n"
            + (f"{note}\n\n" if note else "") + body.rstrip("\n") + "\n")
    with open(RESULTS, "a") as fh:
        fh.write(text)
    print(f"appended to {RESULTS}")
