"""Shared by the benchmark scripts: print a Markdown report and write it under benchmarks/results/."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ganno_lightning.files import atomic_write_text


def write_report(lines: Sequence[str], out: str | Path) -> Path:
    """Print ``lines`` and write them (newline-terminated) to ``out``, creating its folder."""
    text = "\n".join(lines).rstrip("\n") + "\n"
    print(text)
    out = Path(out)
    atomic_write_text(out, text)
    return out
