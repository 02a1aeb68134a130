"""Public outcome logs for a new user: download RouterBench and convert it to the long format.

``download`` streams a URL to disk and resumes an interrupted transfer (HTTP
Range requests) so that a 100+ MB file need not start over after a dropped
connection. The partial file lives next to the destination as ``*.part`` and
is renamed only once complete, so a file at ``dest`` is always whole.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx

from training.progress import bar

ROUTERBENCH_URL = "https://huggingface.co/datasets/withmartian/routerbench/resolve/main/routerbench_0shot.pkl"
ROUTERBENCH_PICKLE = "routerbench_0shot.pkl"
ROUTERBENCH_PARQUET = "routerbench.parquet"
DEFAULT_RETRIES = 3


class DownloadError(RuntimeError):
    """A download failed; the message names the URL and the HTTP status or network error."""


def download(
    url: str,
    dest: Path,
    *,
    progress: bool = True,
    chunk_size: int = 1 << 20,
    timeout: float = 60,
    retries: int = DEFAULT_RETRIES,
) -> Path:
    """Download ``url`` to ``dest`` (skipped if ``dest`` exists), resuming a previous partial download.

    A dropped connection is resumed up to ``retries`` times within this call;
    after that the error is raised and the ``.part`` file kept, so the next
    call continues where this one stopped.
    """
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    headers = {"Authorization": f"Bearer {os.environ['HF_TOKEN']}"} if os.environ.get("HF_TOKEN") else {}
    # httpx drops the Authorization header on a redirect to another host (e.g. a CDN), as it should.
    with httpx.Client(follow_redirects=True, timeout=timeout, headers=headers) as client:
        for attempt in range(retries + 1):
            try:
                _fetch_into(client, url, part, progress=progress, chunk_size=chunk_size)
                break
            except httpx.TransportError as exc:
                if attempt == retries:
                    have = part.stat().st_size if part.exists() else 0
                    raise DownloadError(
                        f"download of {url} failed: {type(exc).__name__}: {exc}; "
                        f"{have} bytes kept in {part}, run again to resume"
                    ) from exc
    os.replace(part, dest)  # atomic: dest appears only when complete
    return dest


def _fetch_into(client: httpx.Client, url: str, part: Path, *, progress: bool, chunk_size: int) -> None:
    """Continue ``part`` from its size until it holds the whole file; a dropped connection raises."""
    offset = part.stat().st_size if part.exists() else 0
    # identity: byte ranges must count the file's own bytes, not those of a compressed stream
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416:  # nothing left past our offset
            complete = _total_from_content_range(response.headers.get("Content-Range")) == offset
        elif response.status_code not in (200, 206):
            raise DownloadError(_status_message(url, response))
        else:
            _write_body(response, part, offset, progress=progress, chunk_size=chunk_size)
            return
    if not complete:
        part.unlink()  # the partial file does not fit the remote file: start over
        _fetch_into(client, url, part, progress=progress, chunk_size=chunk_size)


def _write_body(response: httpx.Response, part: Path, offset: int, *, progress: bool, chunk_size: int) -> None:
    """Append a 206 body to ``part`` (or write a 200 body from zero); a short body raises."""
    if response.status_code == 200:  # the server ignored Range: restart from zero
        offset = 0
    elif _start_from_content_range(response.headers.get("Content-Range")) != offset:
        raise DownloadError(
            f"download of {response.url} failed: asked for bytes from {offset}, "
            f"got Content-Range {response.headers.get('Content-Range')!r}"
        )
    total = _expected_size(response, offset)
    # Chunks are taken as they arrive (iter_raw without a size) so that bytes received
    # before a dropped connection reach the .part file; chunk_size sizes the write buffer.
    with part.open("ab" if offset else "wb", buffering=chunk_size) as out, bar(
        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
        desc=part.name.removesuffix(".part"), enabled=progress,
    ) as shown:
        for chunk in response.iter_raw():
            out.write(chunk)
            shown.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        raise httpx.RemoteProtocolError(f"connection closed after {size} of {total} bytes")


def _expected_size(response: httpx.Response, offset: int) -> int | None:
    """Size of the whole file, from Content-Range (206) or Content-Length (200)."""
    if response.status_code == 206:
        total = _total_from_content_range(response.headers.get("Content-Range"))
        if total is not None:
            return total
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def _start_from_content_range(value: str | None) -> int | None:
    match = re.match(r"\s*bytes\s+(\d+)-", value or "")
    return int(match.group(1)) if match else None


def _total_from_content_range(value: str | None) -> int | None:
    match = re.search(r"/(\d+)\s*$", value or "")
    return int(match.group(1)) if match else None


def _status_message(url: str, response: httpx.Response) -> str:
    message = f"download of {url} failed: HTTP {response.status_code} {response.reason_phrase}"
    if response.status_code in (401, 403):
        message += " (for a gated or private file, set HF_TOKEN to a Hugging Face access token)"
    return message


def fetch_routerbench(cache_dir: Path, url: str = ROUTERBENCH_URL, progress: bool = True) -> Path:
    """Download RouterBench's 0-shot pickle and convert it; returns the long-format Parquet file.

    Files: ``cache_dir/routerbench/routerbench_0shot.pkl`` and
    ``cache_dir/routerbench/routerbench.parquet`` (rebuilt only when older than the pickle).
    """
    from training.logs import read_log_file  # pandas and the tokenizer only when converting

    folder = Path(cache_dir) / "routerbench"
    pickle_path = download(url, folder / ROUTERBENCH_PICKLE, progress=progress)
    parquet_path = folder / ROUTERBENCH_PARQUET
    if parquet_path.exists() and parquet_path.stat().st_mtime >= pickle_path.stat().st_mtime:
        return parquet_path
    outcomes = read_log_file(pickle_path)
    temporary = parquet_path.with_name(f".{parquet_path.name}.{os.getpid()}.tmp")
    try:
        outcomes.to_parquet(temporary, index=False, compression="zstd")
        os.replace(temporary, parquet_path)  # readers never see a half-written file
    finally:
        temporary.unlink(missing_ok=True)
    return parquet_path
