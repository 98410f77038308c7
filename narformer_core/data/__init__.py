"""Benchmark loaders: published ground truth -> architecture graphs + label columns.

Where the shared benchmark files live is configurable: ``--data-dir`` on the command line, the
``NARFORMER_DATA_DIR`` environment variable, else ``../shared/data`` beside the project.
"""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class DataUnavailable(FileNotFoundError):
    """A benchmark file is not where we looked; the message says where we looked and what to do."""


def data_dir(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override)
    env = os.environ.get("NARFORMER_DATA_DIR")
    if env:
        return Path(env)
    return PROJECT_ROOT.parent / "shared" / "data"


def shared_file(name: str, override: str | os.PathLike | None = None) -> Path:
    p = data_dir(override) / name
    if not p.exists():
        raise DataUnavailable(
            f"{name} not found in {p.parent}. Point --data-dir or NARFORMER_DATA_DIR at the folder "
            "holding the shared benchmark files, or use the embedded default labels ('analog').")
    return p
