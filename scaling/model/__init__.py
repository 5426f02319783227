"""The model: a decoder-only GPT (:mod:`.gpt`) and its causal attention kernels, written in XLA
(:mod:`.attention`) or in C++ for CPUs (:mod:`.cpu_attention`), and its dense products through
OpenBLAS on CPUs (:mod:`.cpu_dense`); the C++ is built on first use into a verified cache
(:mod:`.kernel_cache`; the sources are in ``kernels/``)."""

from scaling.model.cpu_dense import check_dense, dense_kind
from scaling.model.gpt import (
    GPT,
    MLP,
    Attention,
    Block,
    Cache,
    attention_kernel,
    build_cpu_kernels,
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
    "build_cpu_kernels",
    "check_attention",
    "check_dense",
    "constrain_residual",
    "dense_kind",
    "init_cache",
    "rotary",
    "stack_layers",
    "training_attention",
    "unstack_layers",
]
