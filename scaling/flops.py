"""Parameter counts and training FLOPs per token, analytic and as XLA compiled them.

Conventions (documented because scaling-law papers differ):
- ``n_params``: every parameter array of the model, the padded embedding rows included.
- ``n_params_nonembed``: ``n_params`` less the token and position embeddings and an untied
  output head (Kaplan et al.'s N).
- ``6N``: 6 * n_params per token (Chinchilla's C = 6ND).
- Kaplan: 6 * n_params_nonembed + 6 * n_layer * n_ctx * d_model per token.
- Chinchilla Appendix F: embeddings, QKV, attention logits, softmax, attention over
  values, output projection, dense block (3 matrices for SwiGLU) and final logits, per
  sequence of n_ctx tokens over the padded vocabulary; backward = 2 x forward.
"""

from __future__ import annotations

from typing import Any

from scaling.config import ModelConfig


def _norm_params(cfg: ModelConfig) -> int:
    return cfg.d_model * (2 if cfg.norm == "layernorm" and cfg.bias else 1)


def layer_params(cfg: ModelConfig) -> int:
    d, f = cfg.d_model, cfg.ff_dim
    attn = 4 * d * d + (4 * d if cfg.bias else 0)
    n_mats = 2 if cfg.mlp == "gelu" else 3
    mlp = n_mats * d * f + ((n_mats - 1) * f + d if cfg.bias else 0)
    return attn + mlp + 2 * _norm_params(cfg)


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """``{"n_params", "n_params_nonembed", "n_params_embed"}`` of the model ``cfg`` builds."""
    embed = cfg.padded_vocab * cfg.d_model
    if cfg.position == "learned":
        embed += cfg.seq_len * cfg.d_model
    if not cfg.tie_embeddings:
        embed += cfg.padded_vocab * cfg.d_model
    nonembed = cfg.n_layer * layer_params(cfg) + _norm_params(cfg)
    return {"n_params": nonembed + embed, "n_params_nonembed": nonembed, "n_params_embed": embed}


def flops_per_token_6n(cfg: ModelConfig) -> float:
    return 6.0 * param_counts(cfg)["n_params"]


def flops_per_token_kaplan(cfg: ModelConfig) -> float:
    return 6.0 * param_counts(cfg)["n_params_nonembed"] + 6.0 * cfg.n_layer * cfg.seq_len * cfg.d_model


def chinchilla_forward_terms(cfg: ModelConfig) -> dict[str, float]:
    """Forward FLOPs per sequence of ``seq_len`` tokens, term by term (Hoffmann et al. App. F)."""
    s, d, v, h, k = cfg.seq_len, cfg.d_model, cfg.padded_vocab, cfg.n_head, cfg.head_dim
    n_mats = 2 if cfg.mlp == "gelu" else 3
    return {
        "embeddings": 2.0 * s * v * d,
        "qkv": cfg.n_layer * 2.0 * 3 * s * d * (k * h),
        "attention_logits": cfg.n_layer * 2.0 * s * s * (k * h),
        "softmax": cfg.n_layer * 3.0 * h * s * s,
        "attention_values": cfg.n_layer * 2.0 * s * s * (k * h),
        "attention_output": cfg.n_layer * 2.0 * s * (k * h) * d,
        "dense": cfg.n_layer * 2.0 * s * n_mats * d * cfg.ff_dim,
        "final_logits": 2.0 * s * d * v,
    }


def flops_per_token_chinchilla(cfg: ModelConfig) -> float:
    return 3.0 * sum(chinchilla_forward_terms(cfg).values()) / cfg.seq_len


def xla_flops(compiled: Any) -> float:
    """FLOPs XLA's cost analysis reports for one call of a compiled function."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", 0.0)) if cost else 0.0


def all_flops_per_token(cfg: ModelConfig) -> dict[str, float]:
    return {
        "6nd": flops_per_token_6n(cfg),
        "kaplan": flops_per_token_kaplan(cfg),
        "chinchilla": flops_per_token_chinchilla(cfg),
    }
