"""Hugging Face datasets as text: ``hf:NAME[:CONFIG][@SPLIT]`` specs and their records' texts.

``NAME`` is a dataset on the Hub (``wikitext``), a local dataset directory that ``load_dataset``
reads (data files, a loading script), or a directory written by ``Dataset.save_to_disk``.
``CONFIG`` picks the dataset's configuration (``hf:wikitext:wikitext-2-raw-v1``); ``SPLIT`` the
split (default ``train``, else the first one). An existing path is taken whole as ``NAME``
(a path may hold ``:``), then ``@SPLIT`` is split off the right. Records are streamed
(``load_dataset(..., streaming=True)``): only the chosen split is read, record by record,
without building the whole dataset in the Hugging Face cache first. The text is the
record's ``data.hf_text_field`` (default ``text``).

``datasets`` is an optional dependency (``pip install 'scaling[hf]'``), imported on use.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from scaling.errors import UsageError

PREFIX = "hf:"
HF_EXTRA = "pip install 'scaling[hf]'"


@dataclass(frozen=True)
class HFSpec:
    """A dataset, its configuration and its split (None: the defaults)."""

    name: str
    config: str | None = None
    split: str | None = None

    def __str__(self) -> str:
        return (
            PREFIX + self.name + (f":{self.config}" if self.config else "") + (f"@{self.split}" if self.split else "")
        )


def parse_hf_spec(spec: str) -> HFSpec:
    """``hf:NAME[:CONFIG][@SPLIT]`` (the ``hf:`` prefix optional) -> :class:`HFSpec`."""
    target = spec[len(PREFIX) :] if spec.startswith(PREFIX) else spec
    split = None
    if not Path(target).exists() and "@" in target:
        target, split = target.rsplit("@", 1)
    config = None
    if not Path(target).exists() and ":" in target:
        target, config = target.split(":", 1)
    if not target or split == "" or config == "":
        raise UsageError(f"bad dataset spec {spec!r}: expected hf:NAME[:CONFIG][@SPLIT]")
    return HFSpec(target, config, split)


def import_datasets():
    try:
        import datasets
    except ImportError:
        raise UsageError(f"hf: corpora need the 'datasets' package ({HF_EXTRA})") from None
    return datasets


def _is_saved(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _pick_split(ds, spec: HFSpec):
    """One split of a dataset dict: the named one, else ``train``, else the first."""
    if not hasattr(ds, "keys"):
        return ds
    if spec.split is not None:
        if spec.split not in ds:
            raise UsageError(f"dataset {spec.name!r} has no split {spec.split!r} (splits: {sorted(ds)})")
        return ds[spec.split]
    return ds["train"] if "train" in ds else ds[next(iter(ds))]


def open_split(spec: HFSpec, streaming: bool = True):
    """The split of ``spec`` as a ``datasets`` (Iterable)Dataset; one-line errors."""
    datasets = import_datasets()
    try:
        if _is_saved(Path(spec.name)):
            if spec.config:
                raise UsageError(f"a dataset saved to disk has no configurations: {spec}")
            return _pick_split(datasets.load_from_disk(spec.name), spec)
        kwargs = {"split": spec.split} if spec.split else {}
        return _pick_split(datasets.load_dataset(spec.name, spec.config, streaming=streaming, **kwargs), spec)
    except UsageError:
        raise
    except Exception as e:  # datasets raises many types: missing dataset, config, split, network
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"cannot load dataset {spec}: {first}") from None


def iter_texts(spec: HFSpec, field: str, streaming: bool = True) -> Iterator[str]:
    """Each record's ``field`` of the split, in the dataset's order."""
    ds = open_split(spec, streaming)
    columns = getattr(ds, "column_names", None)
    if columns is not None and field not in columns:
        raise UsageError(f"dataset {spec} has no text field {field!r} (columns: {columns})")
    for i, record in enumerate(ds):
        text = record.get(field)
        if not isinstance(text, str):
            raise UsageError(f"dataset {spec} record {i}: field {field!r} is not text ({type(text).__name__})")
        yield text
