"""Corpus -> tokens on disk -> batches that are a pure function of (seed, step); numpy only.

- :mod:`.corpus`: a corpus's documents and the documents held out for validation;
- :mod:`.packaged`: the named corpora embedded in the package, extracted into the cache and
  checked (:mod:`.embed` rebuilds them from a data directory);
- :mod:`.hf`: Hugging Face datasets (``hf:NAME[:CONFIG][@SPLIT]``), streamed;
- :mod:`.prepare`: corpora fetched, cleaned and checked into a data directory
  (``python -m experiments.prepare``);
- :mod:`.tokens`: the corpus tokenized once into cached, memmapped train and validation splits;
- :mod:`.batches`: training batches as a pure function of (seed, step), fixed validation batches;
- :mod:`.curriculum_scores`: a curriculum's difficulty scores of the training windows, cached;
- :mod:`.curriculum`: pacing functions and the competence sampler that picks a curriculum's
  training windows.
"""

from scaling.data.batches import Batches
from scaling.data.corpus import NAMED_CORPORA, Document, corpus_documents, val_doc_indices
from scaling.data.tokens import TokenSplits, load_tokens

__all__ = ["NAMED_CORPORA", "Batches", "Document", "TokenSplits", "corpus_documents", "load_tokens", "val_doc_indices"]
