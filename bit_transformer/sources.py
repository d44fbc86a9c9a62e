"""Where corpus text comes from: the built-in corpus, local files, or a Hugging Face dataset.

Every source yields raw bytes plus a ``source_id`` (a readable label; the cache also keys on the
content hash, so two different texts never share a cache entry). Order is deterministic: files are
read in sorted order, dataset rows in dataset order.

Built-in corpus: real text that ships with CPython itself, so it works offline on a fresh machine.
1. ``pydoc_data/topics.py``: the Python documentation topics (language reference sections) as plain
   text, the same text ``help('if')`` prints; about 0.47 MB on Python 3.11.
2. The top-level standard-library modules (``<stdlib>/*.py``, sorted by file name; no packages, no
   tests): code, comments and docstrings; about 4.7 MB on Python 3.11.
Both are part of the CPython distribution under the PSF License Agreement (version 2). The text is
identical on every machine with the same Python version; other versions give a different text and so
a different content hash (and cache entry).
"""

from __future__ import annotations

import glob
import os
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .config import DataConfig

_BUILTIN_SEPARATOR = "\n\n"


@dataclass
class SourceText:
    """Raw corpus bytes and a label saying where they came from."""

    source_id: str
    data: bytes
    files: list[str]  # files read (empty for hf / the docs part of builtin)


def _stdlib_dir() -> Path:
    path = Path(sysconfig.get_paths()["stdlib"])
    return path if path.is_dir() else Path(os.__file__).parent


def builtin_files() -> list[Path]:
    """The stdlib source files of the built-in corpus, in the order they are used."""
    return sorted(p for p in _stdlib_dir().glob("*.py") if p.is_file())


def _builtin_parts() -> Iterator[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions package pydoc_data separately
        topics = {}
    for key in sorted(topics):
        yield f"{key}\n{'=' * len(key)}\n\n{topics[key].strip()}{_BUILTIN_SEPARATOR}"
    for path in builtin_files():
        text = path.read_bytes().decode("utf-8", errors="replace")
        yield f"# {path.name}\n{text.rstrip()}{_BUILTIN_SEPARATOR}"


def builtin_text(max_bytes: int | None = None) -> str:
    """Real text shipped with Python (docs topics, then stdlib sources); at most ``max_bytes`` UTF-8 bytes.

    Deterministic for a given Python version. Stops reading files once ``max_bytes`` is reached and
    never cuts a UTF-8 character in half.
    """
    pieces: list[bytes] = []
    size = 0
    for part in _builtin_parts():
        raw = part.encode("utf-8")
        if max_bytes is not None and size + len(raw) >= max_bytes:
            pieces.append(raw[: max_bytes - size])
            break
        pieces.append(raw)
        size += len(raw)
    text = b"".join(pieces).decode("utf-8", errors="ignore")  # drops only a cut trailing character
    if not text:
        raise RuntimeError(
            f"the built-in corpus is empty: no pydoc_data topics and no .py files in {_stdlib_dir()}; "
            "use source='files' or source='hf'"
        )
    return text


def builtin_source_id() -> str:
    return f"builtin:python{sys.version_info.major}.{sys.version_info.minor}"


def expand_paths(patterns: list[str]) -> list[Path]:
    """Files named by paths or globs (``**`` recursive), sorted per pattern, duplicates dropped."""
    out: list[Path] = []
    seen: set[Path] = set()
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        matches = sorted(glob.glob(expanded, recursive=True)) if glob.has_magic(expanded) else [expanded]
        files = [Path(m) for m in matches if Path(m).is_file()]
        if not files:
            if not glob.has_magic(expanded) and Path(expanded).is_dir():
                raise IsADirectoryError(
                    f"data path {pattern!r} is a directory; give a glob such as '{pattern.rstrip('/')}/**/*.txt'"
                )
            raise FileNotFoundError(f"data path or glob {pattern!r} matched no files (cwd: {os.getcwd()})")
        for f in files:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


def _join_limited(chunks: Iterator[bytes], max_bytes: int | None) -> bytes:
    """Concatenate chunks, stopping (and truncating) once ``max_bytes`` bytes are collected."""
    pieces: list[bytes] = []
    size = 0
    for chunk in chunks:
        pieces.append(chunk)
        size += len(chunk)
        if max_bytes is not None and size >= max_bytes:
            break
    data = b"".join(pieces)
    return data if max_bytes is None else data[:max_bytes]


def _files_chunks(files: list[Path]) -> Iterator[bytes]:
    # A newline between files that do not end with one, so the last line of one file and the first of
    # the next never merge.
    for i, path in enumerate(files):
        data = path.read_bytes()
        yield data
        if data and not data.endswith(b"\n") and i < len(files) - 1:
            yield b"\n"


def _hf_chunks(cfg: DataConfig) -> Iterator[bytes]:
    import datasets  # heavy import, only for this source

    kwargs = {} if cfg.hf_data_files is None else {"data_files": cfg.hf_data_files}
    ds = datasets.load_dataset(cfg.hf_name, cfg.hf_config, split=cfg.hf_split, **kwargs)
    if cfg.text_field not in ds.column_names:
        raise KeyError(
            f"dataset {cfg.hf_name!r} has no column {cfg.text_field!r}; columns: {ds.column_names} (set text_field)"
        )
    # Rows are lines: wikitext rows keep their '\n', the 'text' builder strips it. Add one only where
    # missing so both round-trip to the original file.
    for batch in ds.select_columns([cfg.text_field]).iter(batch_size=4096):
        rows = ["" if r is None else str(r) for r in batch[cfg.text_field]]
        yield "".join(r if r.endswith("\n") else r + "\n" for r in rows).encode("utf-8")


def _short_files(files: str | list[str] | dict[str, str | list[str]]) -> str:
    if isinstance(files, dict):
        return ",".join(f"{k}={_short_files(v)}" for k, v in sorted(files.items()))
    if isinstance(files, str):
        return files
    return (files[0] if files else "") + (f" (+{len(files) - 1} more)" if len(files) > 1 else "")


def read_source(cfg: DataConfig) -> SourceText:
    """The configured source's bytes (truncated to ``cfg.max_bytes``) and its label."""
    if cfg.source == "builtin":
        return SourceText(builtin_source_id(), builtin_text(cfg.max_bytes).encode("utf-8"), [])
    if cfg.source == "files":
        files = expand_paths(cfg.paths)
        shown = [str(f.resolve()) for f in files[:3]]
        label = ",".join(shown) + (f" (+{len(files) - 3} more)" if len(files) > 3 else "")
        return SourceText(f"files:{label}", _join_limited(_files_chunks(files), cfg.max_bytes), [str(f) for f in files])
    label = f"hf:{cfg.hf_name}/{cfg.hf_config or '-'}/{cfg.hf_split}:{cfg.text_field}"
    if cfg.hf_data_files is not None:  # e.g. hf_name='text' over local files: name them in the label
        label += f"[{_short_files(cfg.hf_data_files)}]"
    return SourceText(label, _join_limited(_hf_chunks(cfg), cfg.max_bytes), [])
