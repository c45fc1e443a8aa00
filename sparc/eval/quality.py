"""Quality measures on real data: perplexity of causal LMs, similarity correlation of encoders.

Perplexity: the text is tokenized once, cut into windows of ``window`` tokens, and
ppl = exp(mean over predicted tokens of −log p(token | prefix)), each window scored on its own.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sparc.eval import datasets

Run = Callable[[dict], np.ndarray]


def token_windows(tokenizer, text: str, *, window: int, count: int) -> list[np.ndarray]:
    """The first ``count`` windows of ``window`` token ids of ``text``, as [1, window] arrays."""
    needed = window * count
    ids: list[int] = []
    chars = needed * 6
    while len(ids) < needed:
        ids = tokenizer(text[:chars], add_special_tokens=False)["input_ids"]
        if chars >= len(text):
            break
        chars *= 2
    if len(ids) < needed:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than {count} windows of {window}")
    return [np.array(ids[i * window : (i + 1) * window], np.int64)[None] for i in range(count)]


def window_feeds(window: np.ndarray) -> dict[str, np.ndarray]:
    """Inputs of a causal LM for one unpadded window."""
    return {"input_ids": window, "attention_mask": np.ones_like(window)}


def negative_log_likelihood(logits: np.ndarray, ids: np.ndarray) -> tuple[float, int]:
    """(sum of −log p(ids[t+1] | ids[≤t]), number of predicted tokens) for one window."""
    logits = logits[0, :-1].astype(np.float64)
    targets = ids[0, 1:]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=-1))
    picked = shifted[np.arange(len(targets)), targets]
    return float((log_norm - picked).sum()), len(targets)


def perplexity(run: Run, windows: list[np.ndarray]) -> float:
    """exp(mean NLL) of ``run`` (feeds → logits) over ``windows``."""
    total, count = 0.0, 0
    for window in windows:
        nll, tokens = negative_log_likelihood(run(window_feeds(window)), window)
        total += nll
        count += tokens
    return float(np.exp(total / count))


def encoder(run, model, seq: int = 128):
    """A function texts -> embeddings running ``run(feeds)`` (one array, or a dict whose first
    value is the embedding) on batches of 16 texts of ``model`` (a zoo model) at ``seq`` tokens."""

    def first(result):
        return next(iter(result.values())) if isinstance(result, dict) else result

    def encode(texts):
        return np.concatenate([first(run(feeds)) for feeds in model.batches(texts, 16, seq=seq)])

    return encode


def lee_correlation(encode: Callable[[list[str]], np.ndarray]) -> float:
    """Pearson r between cosine similarity of ``encode(texts)`` and the human Lee ratings."""
    return lee_correlation_of(encode(datasets.lee_documents()))


def lee_correlation_of(embeddings: np.ndarray) -> float:
    """Pearson r between cosine similarities of the Lee documents' ``embeddings`` (in
    :func:`datasets.lee_documents` order) and the human ratings of the 1,225 pairs."""
    i, j, ratings = datasets.lee_similarity_pairs()
    embeddings = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    cosine = np.sum(embeddings[i] * embeddings[j], axis=1)
    return float(np.corrcoef(cosine, ratings)[0, 1])


def sentiment_accuracy(encode: Callable[[list[str]], np.ndarray]) -> float:
    """5-fold cross-validated accuracy of a logistic regression on ``encode``'s embeddings of
    the 200 labelled movie-review sentences."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    texts, labels = datasets.polarity_sentences()
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    scores = cross_val_score(LogisticRegression(max_iter=2000), encode(texts), labels, cv=folds)
    return float(scores.mean())
