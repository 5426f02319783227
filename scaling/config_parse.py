"""A :class:`~scaling.config.Config` from nested mappings, a YAML file and the
``--section.field VALUE`` command line: every value parsed to its field's type, unknown
sections and fields refused (:class:`scaling.errors.UsageError`), older field names read
under their current ones.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from scaling.config import Config
from scaling.errors import UsageError, did_you_mean
from scaling.fields import field_type, parse_value, show
from scaling.io import load_yaml

__all__ = [
    "HIDDEN_SECTIONS",
    "MOVED_FIELDS",
    "parse_sections",
    "from_dict",
    "add_config_arguments",
    "overrides_from_args",
    "merge",
    "resolve",
]

HIDDEN_SECTIONS = ("debug",)
"""Sections settable on the command line but left out of --help."""
MOVED_FIELDS = {"train.inject_nan_step": "debug.inject_nan_step"}
"""Fields read under an older name, so that config.yaml files that hold them stay readable."""


T = TypeVar("T")


def _keys(d: dict) -> str:
    return str(sorted(map(str, d))[0])


def _moved(d: dict) -> dict:
    """``d`` with each field of MOVED_FIELDS under its current name (the current name wins when
    both are given)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for old, new in MOVED_FIELDS.items():
        (sec, name), (new_sec, new_name) = old.split("."), new.split(".")
        if isinstance(out.get(sec), dict) and name in out[sec] and isinstance(out.get(new_sec) or {}, dict):
            value = out[sec].pop(name)
            out[new_sec] = {new_name: value, **(out.get(new_sec) or {})}
    return out


def parse_sections(d: Any) -> dict[str, dict[str, Any]]:
    """Nested mappings of sections and fields with every value parsed to its field's type
    (ranges are left to the dataclasses); UsageError on an unknown name or a wrong type."""
    if not isinstance(d, dict):
        raise UsageError(f"a config must be a mapping of sections, got {show(d)}")
    sections = [f.name for f in dataclasses.fields(Config)]
    unknown = {k: None for k in d if k not in sections}
    if unknown:
        raise UsageError(f"unknown config section {_keys(unknown)!r}{did_you_mean(_keys(unknown), sections)}")
    d = _moved(d)
    out = {}
    for f in dataclasses.fields(Config):
        given = d.get(f.name)
        if given is None:
            continue
        if not isinstance(given, dict):
            raise UsageError(f"config section {f.name} must be a mapping of fields, got {show(given)}")
        cls = f.default_factory  # type: ignore[misc]
        known = {g.name for g in dataclasses.fields(cls)}
        unknown = {k: None for k in given if k not in known}
        if unknown:
            raise UsageError(f"unknown config field {f.name}.{_keys(unknown)}{did_you_mean(_keys(unknown), known)}")
        out[f.name] = {k: parse_value(v, field_type(cls, k), f"{f.name}.{k}") for k, v in given.items()}
    return out


def from_dict(d: Any, base: Config | None = None) -> Config:
    """Build a Config from nested mappings, starting from ``base`` (defaults if None)."""
    base = base or Config()
    parsed = parse_sections(d)
    return Config(
        **{
            f.name: dataclasses.replace(getattr(base, f.name), **parsed.get(f.name, {}))
            for f in dataclasses.fields(Config)
        }
    )


def add_config_arguments(parser: argparse.ArgumentParser, sections: tuple[str, ...] | None = None) -> None:
    """Add one ``--section.field`` option per config field, documented from its metadata."""
    for f in dataclasses.fields(Config):
        if sections is not None and f.name not in sections:
            continue
        cls = f.default_factory  # type: ignore[misc]
        hidden = f.name in HIDDEN_SECTIONS
        group = parser if hidden else parser.add_argument_group(f.name, (cls.__doc__ or "").strip().splitlines()[0])
        for g in dataclasses.fields(cls):
            group.add_argument(
                f"--{f.name}.{g.name}",
                dest=f"{f.name}.{g.name}",
                default=None,
                metavar=field_type(cls, g.name).__name__.upper(),
                help=argparse.SUPPRESS if hidden else f"{g.metadata.get('help', '')} (default: {g.default!r})",
            )


def overrides_from_args(args: argparse.Namespace) -> dict:
    """Nested dict of the ``--section.field`` values given on the command line."""
    out: dict = {}
    for key, value in vars(args).items():
        if "." in key and value is not None:
            sec, name = key.split(".", 1)
            out.setdefault(sec, {})[name] = value
    return out


def merge(a: dict, b: dict) -> dict:
    """Section-wise merge of nested config dicts (b wins; a section of b that is null changes
    nothing). A section that is a mapping on one side only is a UsageError, so that an
    override never hides a malformed section of the file it overrides."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in a.items()}
    for k, v in b.items():
        old = out.get(k)
        if v is None:
            continue
        if old is None:
            out[k] = dict(v) if isinstance(v, dict) else v
        elif isinstance(old, dict) and isinstance(v, dict):
            old.update(v)
        else:
            bad = old if not isinstance(old, dict) else v
            raise UsageError(f"config section {k} must be a mapping of fields, got {show(bad)}")
    return out


def resolve_file(
    config_file: str | None, overrides: dict, parse: Callable[[Any], Any], build: Callable[[dict], T]
) -> T:
    """``build`` of a YAML file's mapping (its values checked on their own by ``parse``: an
    override does not hide a value of the wrong type) with the overrides on top."""
    d = {}
    if config_file is not None:
        d = load_yaml(config_file)
        try:
            parse(d)
        except UsageError as e:
            raise UsageError(f"config file {config_file}: {e}") from None
    return build(merge(d, overrides))


def resolve(config_file: str | None, overrides: dict) -> Config:
    """The run config of a YAML file with the overrides on top (:func:`resolve_file`)."""
    return resolve_file(config_file, overrides, parse_sections, from_dict)
