"""Determinism: the same input, recipe, calibration data and seed give byte-identical output
files, for every pass, compiled twice in one process and once more in a process with another
hash seed (tests/determinism_job.py)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.determinism_job import CASES

ROOT = Path(__file__).resolve().parents[1]


def _run_job(out: Path, hash_seed: str, repeats: int) -> subprocess.Popen:
    environment = os.environ | {"PYTHONHASHSEED": hash_seed}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.determinism_job", str(out), str(repeats)],
        cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """{case: [file digests of run A0, A1 (same process), B0 (other process)]}."""
    root = tmp_path_factory.mktemp("determinism")
    jobs = [_run_job(root / "a", "1", 2), _run_job(root / "b", "2", 1)]
    for job in jobs:
        log, _ = job.communicate(timeout=900)
        assert job.returncode == 0, log[-3000:]
    runs = [root / "a" / "0", root / "a" / "1", root / "b" / "0"]
    return {case: [_digests(run, case) for run in runs] for case in CASES}


def _digests(folder: Path, case: str) -> dict[str, str]:
    files = sorted(folder.glob(f"{case}.onnx*"))
    assert files, f"{case}: nothing written in {folder}"
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.mark.parametrize("case", list(CASES))
def test_outputs_are_byte_identical(outputs, case):
    first, again, other_process = outputs[case]
    assert again == first, f"{case}: a second compile in the same process wrote different bytes"
    assert other_process == first, f"{case}: a compile in another process wrote different bytes"
