"""The learned token router: a two-layer MLP scoring tokens from a few per-token features.

    score(x) = w₂ · tanh(W₁ · (x − μ)/σ + b₁) + b₂

It is fitted by L-BFGS to minimise the mean squared error to a per-token importance target
plus λ·(‖W₁‖² + ‖w₂‖²). Only the order of scores within a sequence matters to the router, so
targets are standardised within each sequence before fitting. ``recall`` measures a score
the way the router uses it: the share of each sequence's true top-k tokens that the score's
top-k keeps.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import optimize

WEIGHT_DECAY = 1e-3


@dataclasses.dataclass
class RouterMLP:
    """Fitted weights; ``mean``/``std`` standardise the features."""

    mean: np.ndarray
    std: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: float

    def score(self, features: np.ndarray) -> np.ndarray:
        hidden = np.tanh(((features - self.mean) / self.std) @ self.w1 + self.b1)
        return hidden @ self.w2 + self.b2

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """(W₁', b₁') with the standardisation folded in: W₁'·x + b₁' = W₁·(x − μ)/σ + b₁."""
        w1 = self.w1 / self.std[:, None]
        return w1, self.b1 - (self.mean / self.std) @ self.w1


def standardise_rows(target: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """z-score each row of ``target`` [rows, n] over its valid entries (invalid ones become 0)."""
    out = np.zeros_like(target, dtype=np.float64)
    for row in range(target.shape[0]):
        keep = valid[row]
        if keep.sum() < 2:
            continue
        values = target[row, keep]
        out[row, keep] = (values - values.mean()) / max(values.std(), 1e-12)
    return out


def fit(features: np.ndarray, target: np.ndarray, *, hidden: int = 16, seed: int = 0) -> RouterMLP:
    """Fit the MLP on rows of ``features`` [N, F] against ``target`` [N] (module docstring)."""
    mean = features.mean(axis=0)
    std = features.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    x = (features - mean) / std
    rng = np.random.default_rng(seed)
    shapes = [(x.shape[1], hidden), (hidden,), (hidden,), ()]
    start = np.concatenate([
        rng.normal(0, 1 / np.sqrt(x.shape[1]), shapes[0]).ravel(),
        np.zeros(hidden),
        rng.normal(0, 1 / np.sqrt(hidden), hidden),
        np.zeros(1),
    ])

    def unpack(theta):
        w1 = theta[: x.shape[1] * hidden].reshape(shapes[0])
        rest = theta[x.shape[1] * hidden :]
        return w1, rest[:hidden], rest[hidden : 2 * hidden], rest[2 * hidden]

    def loss_and_gradient(theta):
        w1, b1, w2, b2 = unpack(theta)
        h = np.tanh(x @ w1 + b1)
        error = h @ w2 + b2 - target
        n = len(target)
        loss = (error @ error) / n + WEIGHT_DECAY * (np.sum(w1 * w1) + w2 @ w2)
        d_out = 2 * error / n
        d_h = np.outer(d_out, w2) * (1 - h * h)
        grad = np.concatenate([
            (x.T @ d_h + 2 * WEIGHT_DECAY * w1).ravel(),
            d_h.sum(axis=0),
            h.T @ d_out + 2 * WEIGHT_DECAY * w2,
            [d_out.sum()],
        ])
        return loss, grad

    result = optimize.minimize(loss_and_gradient, start, jac=True, method="L-BFGS-B",
                               options={"maxiter": 500})
    w1, b1, w2, b2 = unpack(result.x)
    return RouterMLP(mean, std, w1, b1, w2, float(b2))


def recall(score: np.ndarray, target: np.ndarray, valid: np.ndarray, keep: float) -> float:
    """Mean over rows of |top-k(score) ∩ top-k(target)| / k among valid tokens, k = ⌈keep·n⌉."""
    shares = []
    for row in range(score.shape[0]):
        index = np.flatnonzero(valid[row])
        if len(index) < 2:
            continue
        k = max(1, int(np.ceil(keep * len(index))))
        chosen = set(index[np.argsort(-score[row, index], kind="stable")[:k]])
        wanted = set(index[np.argsort(-target[row, index], kind="stable")[:k]])
        shares.append(len(chosen & wanted) / k)
    return float(np.mean(shares)) if shares else float("nan")
