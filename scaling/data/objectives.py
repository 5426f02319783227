"""The batches of the pretraining objectives (``train.objective``), made from the windows of
:class:`~scaling.data.batches.Batches`.

Every objective reads the same ``(B, seq_len + 1)`` windows, which are a pure function of (seed,
step); its corruption is a pure function of the window and a key: in training
``fold_in(fold_in(key(train.seed), step), CORRUPT_TAG)``, in evaluation the fixed
:func:`eval_key` (every run's validation batches are corrupted alike, so runs compare). So a
resumed run sees exactly the batches it would have seen, and a row's corruption does not depend
on the microbatching or the mesh: row r of a batch draws from ``fold_in(key, r)``.

An objective's batch is one int32 array ``(B, 3 * seq_len + 1)`` (:func:`pack`): the model's
inputs, the targets, the targets' 0/1 weights (the tokens the objective predicts and is scored
on) and the bidirectional prefix length of each row (the attention mask,
:func:`scaling.model.attention.prefix_mask`). One array splits into microbatches and shards by
rows like the plain windows.

- ``causal``: inputs ``w[:T]``, targets ``w[1:]``, every weight 1, prefix 0.
- ``mlm`` (BERT): exactly ``round(mask_rate * T)`` positions of ``w[:T]`` per row are chosen;
  80% of them become the mask id, 10% a uniformly drawn token, 10% stay; the targets are the
  original tokens at the chosen positions (weight 1) and the prefix is T (bidirectional).
- ``prefix_denoise`` (T5's span corruption in a decoder-only model, as UL2's R-denoiser): the
  first ``L`` tokens of the window are split into ``k`` noise spans (``n`` tokens,
  ``corrupt_rate`` of L, mean length ``mean_span``) between ``k + 1`` kept runs (the first and
  the last may be empty), each cutting uniformly at random (T5's random segmentation). The
  sequence is the corrupted text (each span replaced by its sentinel) as a bidirectional
  prefix of ``L - n + k`` tokens, then for each span its sentinel and its tokens, predicted
  causally; ``L`` is the longest text whose ``L + 2k`` tokens fit in the
  ``T + 1`` of a window. The span tokens are the targets; the sentinels are given, not scored.

The mask id and the sentinels live in the padded rows of the embedding
(``model.vocab_size`` to ``model.padded_vocab - 1``): input-only ids the logits never emit, so a
model's output vocabulary and its bits per byte are those of the causal model. The mask is the
first padded id; the sentinels are the ones after it, reused in turn when a sequence has more
spans than there are padded ids left. An objective that needs more room than the padding gives
is refused (raise ``model.vocab_multiple``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from scaling.config import Config
from scaling.errors import UsageError

CORRUPT_TAG = 0x0B1EC7  # folded into a step's key for its corruption (dropout folds in microbatch indices)
EVAL_SEED = 1234  # the key of every validation batch's corruption
MLM_REPLACE = (0.8, 0.1)  # of the chosen positions: the share masked, the share replaced by a random token


@dataclass(frozen=True)
class Objective:
    """An objective's settings as its batches need them (hashable: bound into compiled steps)."""

    kind: str
    seq_len: int
    vocab_size: int
    padded_vocab: int
    mask_rate: float = 0.15
    corrupt_rate: float = 0.15
    mean_span: float = 3.0

    @classmethod
    def of(cls, cfg: Config) -> Objective:
        """The objective of a config whose ``model.vocab_size`` is resolved; UsageError when the
        padded embedding rows cannot hold its special ids."""
        t, m = cfg.train, cfg.model
        obj = cls(t.objective, m.seq_len, m.vocab_size, m.padded_vocab, t.mask_rate, t.corrupt_rate, t.mean_span)
        need = {"causal": 0, "mlm": 1, "prefix_denoise": 2}[obj.kind]
        if obj.padded_vocab - obj.vocab_size < need:
            raise UsageError(
                f"train.objective={obj.kind} needs {need} spare embedding row(s) above model.vocab_size "
                f"({obj.vocab_size}) for its mask/sentinel ids, but the padded vocabulary has "
                f"{obj.padded_vocab - obj.vocab_size}; raise model.vocab_multiple"
            )
        if obj.kind == "prefix_denoise":
            obj.layout()  # refuses a context too short to corrupt
        return obj

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    @property
    def n_sentinels(self) -> int:
        return self.padded_vocab - self.vocab_size - 1

    def sentinel(self, span: jax.Array) -> jax.Array:
        """The sentinel id of span ``span`` (0, 1, ...): the padded ids after the mask, in turn."""
        return self.vocab_size + 1 + span % self.n_sentinels

    @property
    def n_masked(self) -> int:
        """mlm: positions chosen per row."""
        return min(max(1, round(self.mask_rate * self.seq_len)), self.seq_len)

    @functools.cache  # noqa: B019 (a frozen dataclass: the cache holds a few small instances)
    def layout(self) -> tuple[int, int, int]:
        """prefix_denoise: (text tokens L, noise tokens n, spans k) of every row."""
        for length in range(self.seq_len + 1, 2, -1):
            n = min(max(1, round(length * self.corrupt_rate)), length - 1)
            k = min(max(1, round(n / self.mean_span)), n, length - n)
            if length + 2 * k <= self.seq_len + 1:
                return length, n, k
        raise UsageError(f"train.objective=prefix_denoise needs model.seq_len >= 4, got {self.seq_len}")

    @property
    def predicted_per_row(self) -> int:
        """Targets per row the loss is taken over (the same in every row)."""
        if self.kind == "mlm":
            return self.n_masked
        if self.kind == "prefix_denoise":
            return self.layout()[1]
        return self.seq_len


def eval_key() -> jax.Array:
    return jax.random.key(EVAL_SEED)


def step_key(seed_key: jax.Array, step: jax.Array) -> jax.Array:
    """The corruption key of training step ``step``."""
    return jax.random.fold_in(jax.random.fold_in(seed_key, step), CORRUPT_TAG)


def pack(inputs_bt, targets_bt, weights_bt, prefix_b) -> jax.Array:
    """One int32 (B, 3T + 1) array: inputs, targets, weights, prefix."""
    cols = (inputs_bt, targets_bt, weights_bt, prefix_b[:, None])
    return jnp.concatenate([jnp.asarray(c, jnp.int32) for c in cols], axis=1)


def unpack(packed_bx: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(inputs_bt, targets_bt, weights_bt, prefix_b) of a :func:`pack`-ed batch."""
    t = (packed_bx.shape[1] - 1) // 3
    return packed_bx[:, :t], packed_bx[:, t : 2 * t], packed_bx[:, 2 * t : 3 * t], packed_bx[:, 3 * t]


def _causal(obj: Objective, w_x: jax.Array, key: jax.Array):
    t = obj.seq_len
    return w_x[:t], w_x[1:], jnp.ones(t, jnp.int32), jnp.int32(0)


def _mlm(obj: Objective, w_x: jax.Array, key: jax.Array):
    t = obj.seq_len
    x_t = w_x[:t]
    k_pick, k_how, k_tok = jax.random.split(key, 3)
    order = jnp.argsort(jax.random.uniform(k_pick, (t,)))
    chosen = jnp.zeros(t, bool).at[order[: obj.n_masked]].set(True)
    u = jax.random.uniform(k_how, (t,))
    random_tok = jax.random.randint(k_tok, (t,), 0, obj.vocab_size)
    masked, randomised = MLM_REPLACE
    inputs = jnp.where(chosen & (u < masked), obj.mask_id, x_t)
    inputs = jnp.where(chosen & (u >= masked) & (u < masked + randomised), random_tok, inputs)
    return inputs, jnp.where(chosen, x_t, 0), chosen.astype(jnp.int32), jnp.int32(t)


def random_segmentation(key: jax.Array, n: int, k: int) -> jax.Array:
    """``n`` items cut into ``k`` runs of positive length, uniformly over the cuttings (int32, (k,))."""
    if k == 1:
        return jnp.array([n], jnp.int32)
    cuts = jnp.sort(jax.random.permutation(key, n - 1)[: k - 1] + 1)
    return jnp.diff(jnp.concatenate([jnp.zeros(1, cuts.dtype), cuts, jnp.full(1, n, cuts.dtype)])).astype(jnp.int32)


def _prefix_denoise(obj: Objective, w_x: jax.Array, key: jax.Array):
    length, n, k = obj.layout()
    text = w_x[:length]
    k_noise, k_keep = jax.random.split(key)
    noise_k = random_segmentation(k_noise, n, k)
    # k + 1 kept runs around the spans, the first and the last possibly empty (a span may open or
    # close the text): L - n + 2 items cut into k + 1 positive runs, one taken off each end
    keep_k1 = random_segmentation(k_keep, length - n + 2, k + 1).at[jnp.array([0, k])].add(-1)
    # kept run 0, span 0, kept run 1, span 1, ..., span k-1, kept run k
    seg = jnp.concatenate([jnp.stack([keep_k1[:k], noise_k], axis=1).reshape(2 * k), keep_k1[k:]])
    ends = jnp.cumsum(seg)
    pos = jnp.arange(length)
    idx = jnp.searchsorted(ends, pos, side="right")
    is_noise, span = idx % 2 == 1, idx // 2
    first = pos == (ends - seg)[idx]
    # the prefix: the text with each span replaced by its sentinel
    p_len = length - n + k
    keep = ~is_noise | first
    prefix = (
        jnp.zeros(p_len, jnp.int32)
        .at[jnp.where(keep, jnp.cumsum(keep) - 1, p_len)]
        .set(jnp.where(is_noise, obj.sentinel(span), text), mode="drop")
    )
    # the targets: each span's sentinel, then its tokens
    s_pos = jnp.cumsum(noise_k) - noise_k + jnp.arange(k)
    t_pos = jnp.cumsum(is_noise) - is_noise + span + 1
    spans = jnp.zeros(n + k, jnp.int32).at[s_pos].set(obj.sentinel(jnp.arange(k)))
    spans = spans.at[jnp.where(is_noise, t_pos, n + k)].set(text, mode="drop")
    scored = jnp.ones(n + k, bool).at[s_pos].set(False)
    pad = obj.seq_len + 1 - length - 2 * k
    seq = jnp.concatenate([prefix, spans, jnp.zeros(pad, jnp.int32)])
    weight = jnp.concatenate([jnp.zeros(p_len, bool), scored, jnp.zeros(pad, bool)])[1:]
    return seq[:-1], jnp.where(weight, seq[1:], 0), weight.astype(jnp.int32), jnp.int32(p_len)


_TRANSFORMS = {"causal": _causal, "mlm": _mlm, "prefix_denoise": _prefix_denoise}


def prepare(obj: Objective, windows_bx: jax.Array, key: jax.Array) -> jax.Array:
    """The :func:`pack`-ed objective batch of ``(B, seq_len + 1)`` windows; row r corrupted with
    ``fold_in(key, r)``."""
    keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(windows_bx.shape[0]))
    fn = functools.partial(_TRANSFORMS[obj.kind], obj)
    return pack(*jax.vmap(fn)(jnp.asarray(windows_bx, jnp.int32), keys))


@functools.partial(jax.jit, static_argnums=0)
def _eval_batch(obj: Objective, windows_bx: jax.Array) -> jax.Array:
    return prepare(obj, windows_bx, eval_key())


def eval_batch(obj: Objective, windows_bx) -> np.ndarray:
    """A validation batch as the evaluation step corrupts it (on the host, for its byte counts)."""
    return np.asarray(_eval_batch(obj, jnp.asarray(windows_bx, jnp.int32)))


def predicted_bytes(obj: Objective, batches, n_batches: int, byte_lengths: np.ndarray) -> int:
    """UTF-8 bytes of the tokens ``obj`` predicts in the first ``n_batches`` validation batches."""
    total = 0
    for w in batches.val_batches(n_batches):
        _, targets, weights, _ = unpack(eval_batch(obj, w))
        total += int((np.asarray(byte_lengths)[targets] * weights).sum())
    return total
