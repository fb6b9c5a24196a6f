"""Appending a benchmark's results to its section of benchmarks/RESULTS.md."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def append_to_section(section: str, entry: str) -> None:
    """Add ``entry`` at the end of ``section`` (a ``## `` heading) of RESULTS.md, creating it when missing."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if section not in text:
        text = text.rstrip("\n") + f"\n\n{section}\n"
    start = text.index(section) + len(section)
    end = text.find("\n## ", start)
    end = len(text) if end < 0 else end
    RESULTS.write_text(text[:end].rstrip("\n") + "\n\n" + entry.rstrip("\n") + "\n" + text[end:])
