"""The browser demo (examples/web): built, served on localhost, driven in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from sparc.backends import ort_web
from sparc.capture import load_onnx
from sparc.runtime import OrtRunner

WEB = Path(__file__).resolve().parents[1] / "examples" / "web"
PAIRS = [
    ("The cat sat on the mat.", "A kitten was sitting on the rug."),
    ("Café owners in Zürich protested the new tax—loudly!", "東京 stock prices fell 3.5% on Monday, analysts said."),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    sys.path.insert(0, str(WEB))
    try:
        import build
    finally:
        sys.path.remove(str(WEB))
    folder = build.build(tmp_path_factory.mktemp("site"))
    httpd = build.server(folder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}/index.html"
    httpd.shutdown()


def _page(url: str, a: str, b: str) -> dict:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    environment = os.environ | {"SPARC_WEB": str(ort_web.install()), "CHROMIUM": chromium}
    done = subprocess.run(["node", str(WEB / "check.mjs"), url, a, b], capture_output=True, text=True,
                          timeout=300, env=environment)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("a, b", PAIRS)
def test_the_page_computes_the_similarity_python_computes(site, minilm, a, b):
    folder, url = site
    shown = _page(url, a, b)
    assert not shown["problems"] and shown["status"].startswith("computed"), shown
    runner = OrtRunner(load_onnx(folder / "model.onnx"))
    inputs = [minilm.make_inputs([text], seq=None) for text in (a, b)]
    assert json.loads(shown["tokens"]) == [feeds["input_ids"][0].tolist() for feeds in inputs]
    embeddings = [next(iter(runner.run(feeds).values()))[0] for feeds in inputs]
    expected = float(np.dot(embeddings[0], embeddings[1]))
    assert abs(float(shown["similarity"]) - expected) < 1e-4
