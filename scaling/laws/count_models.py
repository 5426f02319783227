"""Count models (unigram, bigram, trigram, ...) as a floor for trained models.  Pure numpy.

A language model a power law in N and D can describe must at least beat an n-gram count
model fitted on the same training tokens and scored on the same held-out tokens: the
regime diagnostic (:mod:`scaling.laws.checks`) compares every fitted run's validation loss
with the trigram's.  :func:`cross_entropy` gives the count model's mean negative log
likelihood in nats per token.

Two smoothings, both proper distributions over the whole vocabulary for every context:

- ``"absolute"`` (the default, the stronger baseline): interpolated absolute discounting,
  i.e. Kneser-Ney without continuation counts ("Kneser-Ney-lite")::

      P_n(w | h) = max(c(h w) - d, 0) / c(h .) + d u(h) / c(h .) * P_{n-1}(w | h')

  with c(h .) the training count of context h followed by any token, u(h) the number of
  distinct tokens seen after h, h' the context without its first token, and
  P_{n-1}(w | h') used alone when h never occurs; the recursion ends in the add-k
  unigram P_1(w) = (c(w) + k) / (T + k V).
- ``"add_k"``: P(w | h) = (c(h w) + k) / (c(h .) + k V) (Laplace for k = 1).

Scored positions: held-out tokens t >= n - 1, each predicted from the n - 1 held-out
tokens before it (the first n - 1 tokens only serve as context).  N-grams are counted as
int64 keys h_1 V^(n-1) + ... + w, sorted, and looked up by binary search, so any
vocabulary works (V^n must stay below 2^63).
"""

from __future__ import annotations

import numpy as np

from scaling.errors import UsageError

__all__ = ["SMOOTHINGS", "token_probs", "cross_entropy", "baselines"]

SMOOTHINGS = ("absolute", "add_k")


def _tokens(x, vocab_size: int, what: str) -> np.ndarray:
    a = np.asarray(x).ravel()
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise UsageError(f"{what} tokens must be integers, got dtype {a.dtype}")
    a = a.astype(np.int64)
    if a.size and (a.min() < 0 or a.max() >= vocab_size):
        raise UsageError(f"{what} tokens must lie in [0, {vocab_size}), got [{a.min()}, {a.max()}]")
    return a


def _keys(tokens: np.ndarray, n: int, V: int, start: int = 0) -> np.ndarray:
    """Keys of the n-grams ending at positions start+n-1, ..., len-1."""
    m = tokens.size - n + 1 - start
    k = np.zeros(max(m, 0), dtype=np.int64)
    for i in range(n):
        k = k * V + tokens[start + i : start + i + m]
    return k


def _lookup(sorted_keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """values[i] where sorted_keys[i] == query, else 0."""
    if sorted_keys.size == 0:
        return np.zeros(query.size, dtype=values.dtype)
    i = np.minimum(np.searchsorted(sorted_keys, query), sorted_keys.size - 1)
    return np.where(sorted_keys[i] == query, values[i], 0)


def token_probs(
    train,
    heldout,
    order: int,
    *,
    vocab_size: int,
    smoothing: str = "absolute",
    k: float = 1.0,
    discount: float = 0.75,
) -> np.ndarray:
    """P(heldout[t] | heldout[t-order+1 : t]) for t = order-1, ..., len(heldout)-1."""
    if order < 1:
        raise UsageError(f"count model order must be >= 1, got {order}")
    if smoothing not in SMOOTHINGS:
        raise UsageError(f"smoothing must be one of {SMOOTHINGS}, got {smoothing!r}")
    if not k > 0:
        raise UsageError(f"add-k smoothing needs k > 0, got {k}")
    if not 0 < discount < 1:
        raise UsageError(f"the absolute discount must be in (0, 1), got {discount}")
    V = int(vocab_size)
    if V < 1 or float(V) ** order >= 2.0**63:
        raise UsageError(f"vocab_size {V} ** order {order} does not fit the int64 n-gram keys")
    tr = _tokens(train, V, "training")
    ho = _tokens(heldout, V, "held-out")
    if tr.size < order:
        raise UsageError(f"{tr.size} training tokens cannot give {order}-grams")
    if ho.size < order:
        raise UsageError(f"{ho.size} held-out tokens: nothing to score with a {order}-gram model")

    # unigram: add-k
    uni = np.bincount(tr, minlength=V).astype(np.float64)
    p = (uni[ho[order - 1 :]] + k) / (tr.size + k * V)
    orders = range(2, order + 1) if smoothing == "absolute" else ([order] if order > 1 else [])
    for n in orders:
        keys, counts = np.unique(_keys(tr, n, V), return_counts=True)
        ctx, first, distinct = np.unique(keys // V, return_index=True, return_counts=True)
        ctx_count = np.add.reduceat(counts, first).astype(np.float64)
        q = _keys(ho, n, V, start=order - n)  # the n-grams ending at the scored positions
        c_hw = _lookup(keys, counts, q).astype(np.float64)
        c_h = _lookup(ctx, ctx_count, q // V)
        if smoothing == "add_k":
            p = (c_hw + k) / (c_h + k * V)
        else:
            u_h = _lookup(ctx, distinct, q // V).astype(np.float64)
            seen = c_h > 0
            safe = np.where(seen, c_h, 1.0)
            p = np.where(seen, np.maximum(c_hw - discount, 0.0) / safe + discount * u_h / safe * p, p)
    return p


def cross_entropy(
    train, heldout, order: int, *, vocab_size: int, smoothing: str = "absolute", k: float = 1.0, discount: float = 0.75
) -> float:
    """Mean negative log likelihood (nats per token) of ``heldout`` under the order-n count
    model of ``train`` (scored positions and smoothing: module docstring)."""
    p = token_probs(train, heldout, order, vocab_size=vocab_size, smoothing=smoothing, k=k, discount=discount)
    return float(-np.mean(np.log(p)))


def baselines(train, heldout, *, vocab_size: int, orders=(1, 2, 3), **kw) -> dict[str, float]:
    """``{"unigram": nats, "bigram": nats, "trigram": nats}`` (other orders as "<n>-gram")."""
    names = {1: "unigram", 2: "bigram", 3: "trigram"}
    return {names.get(n, f"{n}-gram"): cross_entropy(train, heldout, n, vocab_size=vocab_size, **kw) for n in orders}
