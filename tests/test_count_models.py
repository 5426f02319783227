"""scaling.laws.count_models: n-gram cross-entropy against hand computations on a tiny sequence,
proper distributions for every context, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scaling.errors import UsageError
from scaling.laws import count_models as cm

# vocabulary {0, 1, 2}; training bigrams 01 01 10 02 20, trigrams 010 102 020 201
TRAIN = [0, 1, 0, 2, 0, 1]
HELD = [0, 1, 2, 0]


def test_unigram_add_one_by_hand():
    # counts 3, 2, 1 of 6 tokens: P(w) = (c + 1) / (6 + 3); every held-out token is scored
    p = [4 / 9, 3 / 9, 2 / 9, 4 / 9]
    np.testing.assert_allclose(cm.token_probs(TRAIN, HELD, 1, vocab_size=3), p, rtol=1e-12)
    assert cm.cross_entropy(TRAIN, HELD, 1, vocab_size=3) == pytest.approx(-np.mean(np.log(p)), rel=1e-12)


def test_bigram_add_k_by_hand():
    # contexts: 0 followed 3 times (1, 2, 1), 1 once (0), 2 once (0)
    # P(1|0) = (2+1)/(3+3), P(2|1) = (0+1)/(1+3), P(0|2) = (1+1)/(1+3)
    p = [3 / 6, 1 / 4, 2 / 4]
    got = cm.token_probs(TRAIN, HELD, 2, vocab_size=3, smoothing="add_k")
    np.testing.assert_allclose(got, p, rtol=1e-12)
    # k = 0.5: (2+.5)/(3+1.5), (0+.5)/(1+1.5), (1+.5)/(1+1.5)
    got = cm.token_probs(TRAIN, HELD, 2, vocab_size=3, smoothing="add_k", k=0.5)
    np.testing.assert_allclose(got, [2.5 / 4.5, 0.5 / 2.5, 1.5 / 2.5], rtol=1e-12)


def test_bigram_and_trigram_absolute_discounting_by_hand():
    d = 0.5
    p1 = {0: 4 / 9, 1: 3 / 9, 2: 2 / 9}  # the add-one unigram
    # P(1|0) = (2 - d)/3 + d * 2/3 * P1(1);  P(2|1) = 0 + d * 1/1 * P1(2);  P(0|2) = (1 - d)/1 + d * 1/1 * P1(0)
    p2 = [(2 - d) / 3 + d * 2 / 3 * p1[1], d * p1[2], (1 - d) + d * p1[0]]
    got = cm.token_probs(TRAIN, HELD, 2, vocab_size=3, discount=d)
    np.testing.assert_allclose(got, p2, rtol=1e-12)
    # trigram, scored at positions 2, 3: P(2 | 0 1): context 01 seen once, followed by 0 only
    # -> 0 + d * 1/1 * P2(2|1);  P(0 | 1 2): context 12 never seen -> P2(0|2)
    p3 = [d * p2[1], p2[2]]
    got = cm.token_probs(TRAIN, HELD, 3, vocab_size=3, discount=d)
    np.testing.assert_allclose(got, p3, rtol=1e-12)
    assert cm.cross_entropy(TRAIN, HELD, 3, vocab_size=3, discount=d) == pytest.approx(
        -(math.log(p3[0]) + math.log(p3[1])) / 2, rel=1e-12
    )


@pytest.mark.parametrize("smoothing", cm.SMOOTHINGS)
@pytest.mark.parametrize("order", [1, 2, 3])
def test_every_context_gets_a_distribution(smoothing, order):
    """For seen and unseen contexts, P(w | h) over the whole vocabulary sums to 1."""
    rng = np.random.default_rng(order)
    V = 5
    train = rng.integers(0, 3, size=200)  # tokens 3 and 4 never occur
    contexts = [list(rng.integers(0, 3, size=order - 1)), [4] * (order - 1), [0, 3][: order - 1]]
    for h in contexts:
        total = sum(cm.token_probs(train, h + [w], order, vocab_size=V, smoothing=smoothing)[-1] for w in range(V))
        assert total == pytest.approx(1.0, abs=1e-12), h


def test_orders_rank_on_structured_text():
    """On text with short-range structure, each extra order of context lowers the loss."""
    rng = np.random.default_rng(0)
    words = [[1, 2, 3, 0], [4, 5, 0], [6, 7, 8, 9, 0]]
    seq = np.concatenate([words[i] for i in rng.integers(0, 3, size=3000)])
    b = cm.baselines(seq[:9000], seq[9000:], vocab_size=10)
    assert list(b) == ["unigram", "bigram", "trigram"]
    assert b["unigram"] > b["bigram"] > b["trigram"] > 0
    assert b["unigram"] < math.log(10)


def test_bad_input():
    with pytest.raises(UsageError, match=r"lie in \[0, 3\)"):
        cm.cross_entropy([0, 1, 3], HELD, 2, vocab_size=3)
    with pytest.raises(UsageError, match="must be integers"):
        cm.cross_entropy(np.array([0.0, 1.0]), HELD, 1, vocab_size=3)
    with pytest.raises(UsageError, match="nothing to score"):
        cm.cross_entropy(TRAIN, [0, 1], 3, vocab_size=3)
    with pytest.raises(UsageError, match="smoothing must be one of"):
        cm.cross_entropy(TRAIN, HELD, 2, vocab_size=3, smoothing="kneser")
    with pytest.raises(UsageError, match="does not fit"):
        cm.cross_entropy(TRAIN, HELD, 5, vocab_size=2**20)
