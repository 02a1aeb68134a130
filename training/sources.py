"""Where outcome logs live: local files, directories of Parquet parts, and fsspec URLs.

A log source is one of

* a local file (``logs/served.parquet``) or a ``file://`` URL;
* a directory of Parquet parts, as Spark, Dask and Arrow write them
  (``logs/served.parquet/part-0.parquet`` ..., hive ``key=value``
  sub-directories included), local or behind a URL;
* any other fsspec URL (``s3://bucket/logs/``, ``gs://…``), read with the
  filesystem package the protocol needs (``s3fs``, ``gcsfs``).

:func:`log_parts` expands sources into :class:`LogPart` s, one per file; a
part reads itself into a DataFrame. A directory counts as one log: its parts
share the directory's dataset name (``served`` for ``served.parquet/``), so a
log reads the same whether it is one file or split into parts. Problems are
:class:`~training.logs.LogError` s naming the source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

PARQUET = ".parquet"
# Files a Parquet writer leaves beside the parts that hold no rows.
_NOT_PARTS = ("_SUCCESS", "_metadata", "_common_metadata")


class SourceError(ValueError):
    """A log source cannot be found, listed or read as a log; ``str()`` names it."""

    def __init__(self, source: str, message: str):
        self.source = source
        self.message = message
        super().__init__(f"{source}: {message}")


@dataclass(frozen=True)
class LogPart:
    """One file of a log: its name in messages, the dataset it belongs to, and how to open it."""

    name: str  # what errors show: the path or URL of the file
    dataset: str  # the default dataset of its rows: the file's (or directory's) stem
    suffix: str  # lower-cased extension that picks the reader
    url: str = field(repr=False)  # fsspec URL or local path
    partition_values: tuple[tuple[str, str], ...] = ()  # hive key=value directories above the part

    def open(self):
        """A binary file object of the part (local files open without fsspec)."""
        if not is_url(self.url):
            return open(self.url, "rb")
        import fsspec

        return fsspec.open(self.url, "rb").open()


def _stem(path: str) -> str:
    name = PurePosixPath(path.rstrip("/")).name
    return name[: -len(PurePosixPath(name).suffix)] if PurePosixPath(name).suffix else name


def _filesystem(source: str):
    """(fsspec filesystem, path inside it) of a URL; a clear error for an unknown protocol or missing package."""
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec is a dependency of thrifty
        raise SourceError(source, "reading URLs needs the fsspec package") from None
    try:
        return fsspec.core.url_to_fs(source)
    except ValueError as exc:  # "Protocol not known: foo"
        raise SourceError(source, f"not a readable URL: {exc}") from None
    except ImportError as exc:  # e.g. s3:// without s3fs
        raise SourceError(source, f"this URL's filesystem is not installed: {exc}") from None


def _hive_values(relative: str) -> tuple[tuple[str, str], ...]:
    """``key=value`` directory names above a part, given its path relative to the log's directory (hive partitioning)."""
    return tuple(tuple(d.split("=", 1)) for d in PurePosixPath(relative).parent.parts if "=" in d)  # type: ignore[misc]


def _is_part(path: str) -> bool:
    name = PurePosixPath(path).name
    return name.lower().endswith(PARQUET) and not name.startswith((".", "_")) and name not in _NOT_PARTS


def _local_parts(source: str, known_suffixes: Sequence[str]) -> list[LogPart]:
    path = Path(source)
    if path.is_dir():
        files = sorted(str(p.relative_to(path)) for p in path.rglob(f"*{PARQUET}") if p.is_file() and _is_part(str(p)))
        if not files:
            raise SourceError(source, f"directory holds no Parquet parts (*{PARQUET})")
        dataset = _stem(path.resolve().as_posix())
        # the url is absolute: a Dask worker may run in another directory
        return [LogPart(str(path / f), dataset, PARQUET, str((path / f).resolve()), _hive_values(f)) for f in files]
    suffix = path.suffix.lower()
    _check_suffix(source, suffix, known_suffixes)
    if not path.is_file():
        raise SourceError(source, "no such file")
    return [LogPart(source, path.stem, suffix, str(path.resolve()))]


def _url_parts(source: str, known_suffixes: Sequence[str]) -> list[LogPart]:
    fs, path = _filesystem(source)
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    try:
        is_dir = fs.isdir(path)
        is_file = not is_dir and fs.isfile(path)
    except Exception as exc:  # network filesystems raise their own errors (credentials, DNS, ...)
        raise SourceError(source, f"cannot be reached ({protocol}): {type(exc).__name__}: {exc}") from None
    if is_dir:
        try:
            files = sorted(p for p in fs.find(path) if _is_part(p))
        except Exception as exc:
            raise SourceError(source, f"cannot list the directory: {type(exc).__name__}: {exc}") from None
        if not files:
            raise SourceError(source, f"directory holds no Parquet parts (*{PARQUET})")
        dataset = _stem(path)
        return [LogPart(fs.unstrip_protocol(f), dataset, PARQUET, fs.unstrip_protocol(f), _hive_values(PurePosixPath(f).relative_to(PurePosixPath(path)).as_posix())) for f in files]
    suffix = PurePosixPath(path).suffix.lower()
    _check_suffix(source, suffix, known_suffixes)
    if not is_file:
        raise SourceError(source, "no such file or directory")
    return [LogPart(source, _stem(path), suffix, source)]


def _check_suffix(source: str, suffix: str, known_suffixes: Sequence[str]) -> None:
    if suffix not in known_suffixes:
        raise SourceError(source, f"unknown file type {suffix or '(no extension)'!r}; expected one of {', '.join(known_suffixes)}")


def log_parts(sources: Sequence[str | Path], known_suffixes: Sequence[str]) -> list[LogPart]:
    """The files of ``sources``, in order (a directory's parts sorted by path).

    ``known_suffixes``: extensions a single file may have; the parts of a
    directory are its ``*.parquet`` files.
    """
    parts: list[LogPart] = []
    for source in sources:
        source = str(source)
        if is_url(source):
            parts.extend(_url_parts(source, known_suffixes))
        else:
            parts.extend(_local_parts(source, known_suffixes))
    return parts


def is_url(source: str) -> bool:
    return "://" in str(source)


def read_part(part: LogPart, reader: Callable) -> "object":
    """``reader(file object)`` on the part, with hive partition values added as columns the file lacks."""
    with part.open() as fh:
        frame = reader(fh)
    for key, value in part.partition_values:
        if hasattr(frame, "columns") and key not in frame.columns:
            frame[key] = value
    return frame
