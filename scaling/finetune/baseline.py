"""The bag-of-bytes baseline of a classification task: multinomial logistic regression on each
text's byte histogram (numpy and scipy only).

Features: the 256 byte counts of the UTF-8 text divided by its length, standardised by the
training split's mean and deviation. The weights minimise the mean cross-entropy plus
``l2 / 2 * |W|^2`` (the biases are not penalised), by L-BFGS from zero: a convex problem,
so the result does not depend on a seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax

from scaling.finetune.examples import Dataset, label_names
from scaling.finetune.model import accuracy, macro_f1


def byte_histograms(texts: Sequence[str]) -> np.ndarray:
    out = np.zeros((len(texts), 256), np.float64)
    for i, t in enumerate(texts):
        b = np.frombuffer(t.encode("utf-8"), np.uint8)
        out[i] = np.bincount(b, minlength=256) / max(len(b), 1)
    return out


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """(W (features, classes), b (classes,)) of L2-regularised multinomial logistic regression."""
    n, d = x.shape
    onehot = np.eye(n_classes)[y]

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: d * n_classes].reshape(d, n_classes), theta[d * n_classes :]
        logp = log_softmax(x @ w + b, axis=1)
        loss = -np.sum(onehot * logp) / n + 0.5 * l2 * np.sum(w * w)
        g = (np.exp(logp) - onehot) / n
        return loss, np.concatenate([(x.T @ g + l2 * w).ravel(), g.sum(0)])

    res = minimize(f, np.zeros(d * n_classes + n_classes), jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    return res.x[: d * n_classes].reshape(d, n_classes), res.x[d * n_classes :]


def bag_of_bytes(data: Dataset, l2: float = 1e-3) -> dict:
    """Held-out accuracy and macro F1 of the baseline on a classify dataset."""
    names = label_names(data.train)
    index = {n: i for i, n in enumerate(names)}
    y_tr = np.array([index[r["label"]] for r in data.train])
    y_te = np.array([index.get(r["label"], -1) for r in data.test])
    x_tr, x_te = byte_histograms([r["text"] for r in data.train]), byte_histograms([r["text"] for r in data.test])
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    w, b = fit_logistic((x_tr - mu) / sd, y_tr, len(names), l2)
    pred = np.argmax(((x_te - mu) / sd) @ w + b, axis=1)
    train_acc = accuracy(y_tr, np.argmax(((x_tr - mu) / sd) @ w + b, axis=1))
    return {
        "baseline": "bag-of-bytes logistic regression",
        "l2": l2,
        "train_accuracy": train_acc,
        "accuracy": accuracy(y_te, pred),
        "macro_f1": macro_f1(y_te, pred),
        "n_test": len(y_te),
    }
