"""Fine-tuning a pretrained GPT for instructions or classification (``python -m experiments.finetune``).

    tasks      the shipped tasks, built from a corpus (author, book, nextsentence)
    examples   JSONL records, splits, templates, packing and loss masks, batches by (seed, step)
    lora       low-rank adapters as a parameter transform
    model      trainable trees, classification head, losses, optimizer, metrics
    baseline   the bag-of-bytes logistic-regression baseline of a classification task
    loop       a fine-tuning run: steps, held-out evaluation, checkpoints, its directory

The config is :mod:`scaling.finetune_config`'s.
"""
