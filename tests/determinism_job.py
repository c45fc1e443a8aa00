"""Compile every pass's recipe on real (cut-down) models and export the results to a folder.

``python -m tests.determinism_job OUT [REPEATS]`` writes ``OUT/<run>/<case>.onnx`` (+ its
``.onnx.data``) for each case in :data:`CASES`, compiling every case ``REPEATS`` times (runs
0, 1, ...) in one process. tests/test_determinism.py runs it in two processes with different
hash seeds and requires byte-identical files: same input, recipe, calibration data and seed,
same output, whether in the same process or not.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tests.fuzz.harness import PASS_RECIPES
from tests.fuzz.seeds import seed_files

LEARNED_ROUTER = [{"TokenRouter": {"keep": 0.5, "start_block": 1, "router": "learned"}}]
CASES: dict[str, tuple[str, list]] = {
    **{f"{name}-minilm2": ("minilm2", recipe) for name, recipe in PASS_RECIPES.items()},
    "TokenRouter-learned-minilm2": ("minilm2", LEARNED_ROUTER),
    "SliceRowsColumns-ffn-minilm2": ("minilm2", [{"SliceRowsColumns": {"ratio": 0.25, "target": "ffn"}}]),
    "SliceRowsColumns-smollm2": ("smollm2", PASS_RECIPES["SliceRowsColumns"]),
    "NMSparsity-smollm2": ("smollm2", PASS_RECIPES["NMSparsity"]),
    "ChannelCrop-mnist": ("mnist", PASS_RECIPES["ChannelCrop"]),
    "RecalibrateNorms-mnist": ("mnist", [{"ChannelCrop": {"ratio": 0.25}}, "RecalibrateNorms"]),
}


def run(out: Path, repeats: int) -> None:
    for run_index in range(repeats):
        folder = out / str(run_index)
        folder.mkdir(parents=True, exist_ok=True)
        for case in CASES:
            compile_case(case, folder)


def compile_case(case: str, folder: Path) -> None:
    from sparc import compile

    seed, recipe = CASES[case]
    model, calibration = seed_files(seed)
    compiled = compile(model, calibration=_batches(calibration), recipe={"passes": recipe}, latency_rounds=0)
    compiled.export(folder / f"{case}.onnx")


def _batches(path: Path, size: int = 2) -> list[dict[str, np.ndarray]]:
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    samples = len(next(iter(arrays.values())))
    return [{k: v[i : i + size] for k, v in arrays.items()} for i in range(0, samples, size)]


if __name__ == "__main__":
    run(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1)
