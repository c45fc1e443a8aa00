"""Helpers shared by the benchmark scripts: where results go and how they are written."""

from __future__ import annotations

from pathlib import Path

from sparc.files import write_atomic

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, data, markdown: str, *, echo: bool = True) -> None:
    """Write ``results/<name>.json`` and ``results/<name>.md`` and (``echo``) print the table."""
    import json

    RESULTS.mkdir(exist_ok=True)
    write_atomic(RESULTS / f"{name}.json", json.dumps(data, indent=2))
    write_atomic(RESULTS / f"{name}.md", markdown)
    if echo:
        print(markdown)
