"""Run inside the aarch64 Python under qemu: ``python arm_runner.py DIR``.

DIR/job.json names the models ({name: path}); DIR/inputs.npz holds the feeds. Each model's
outputs go to DIR/<name>.npz, and DIR/versions.json records what ran them. Only numpy and
onnxruntime are imported: this file runs against the aarch64 wheels, not sparc.
"""

import json
import platform
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def main(work: Path) -> None:
    job = json.loads((work / "job.json").read_text())
    feeds = dict(np.load(work / "inputs.npz"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    for name, path in job["models"].items():
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        wanted = {i.name: feeds[i.name] for i in session.get_inputs()}
        names = [o.name for o in session.get_outputs()]
        np.savez(work / f"{name}.npz", **dict(zip(names, session.run(names, wanted))))
    versions = {"machine": platform.machine(), "python": platform.python_version(),
                "onnxruntime": ort.__version__, "numpy": np.__version__}
    (work / "versions.json").write_text(json.dumps(versions))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
