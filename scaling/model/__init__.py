"""The model: a decoder-only GPT (:mod:`.gpt`) and its causal attention kernels, written in XLA
(:mod:`.attention`) or in C++ for CPUs (:mod:`.cpu_attention`, built on first use into a verified
cache, :mod:`.kernel_cache`; the source is ``kernels/causal_attention_cpu.cc``)."""

from scaling.model.gpt import (
    GPT,
    MLP,
    Attention,
    Block,
    Cache,
    attention_kernel,
    check_attention,
    constrain_residual,
    init_cache,
    rotary,
    stack_layers,
    training_attention,
    unstack_layers,
)

__all__ = [
    "GPT",
    "MLP",
    "Attention",
    "Block",
    "Cache",
    "attention_kernel",
    "check_attention",
    "constrain_residual",
    "init_cache",
    "rotary",
    "stack_layers",
    "training_attention",
    "unstack_layers",
]
