"""Inference: decoding with a KV cache, loading a trained run or GPT-2 weights, GPT-2 export.

    decode   greedy and sampling (temperature, top-k, top-p); sequence scoring
    beam     beam search
    load     InferenceModel: a trained run's checkpoint or a GPT-2 directory, with its tokenizer
    hf       reading Hugging Face GPT-2 files (config.json, safetensors or PyTorch weights) into the Flax GPT
    export   writing a run's model as a Hugging Face GPT-2 checkpoint (config.json, model.safetensors)
    hf_tokenizer  the gpt2 and byte vocabularies as Hugging Face tokenizer files, for an export

Loss, perplexity and bits per byte of a text are :mod:`scaling.evaluation`'s; they are
importable from here too, with the decoding and loading names.
"""

from scaling.evaluation import (
    MEMORY_FRACTION,
    Evaluation,
    check_memory,
    device_memory_bytes,
    evaluate_tokens,
    forward_bytes,
    window_plan,
)
from scaling.inference.beam import BeamResult, beam_search
from scaling.inference.decode import (
    GREEDY,
    NEG,
    Generation,
    Sampling,
    Sequences,
    buffer_length,
    choose,
    filter_logits,
    generate,
    plan_buffer,
    sequence_logprob,
)
from scaling.inference.load import InferenceModel, load_checkpoint, load_gpt2

__all__ = [
    "GREEDY",
    "MEMORY_FRACTION",
    "NEG",
    "BeamResult",
    "Evaluation",
    "Generation",
    "InferenceModel",
    "Sampling",
    "Sequences",
    "beam_search",
    "buffer_length",
    "check_memory",
    "choose",
    "device_memory_bytes",
    "evaluate_tokens",
    "filter_logits",
    "forward_bytes",
    "generate",
    "load_checkpoint",
    "load_gpt2",
    "plan_buffer",
    "sequence_logprob",
    "window_plan",
]
