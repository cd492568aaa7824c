"""One place that turns a URI (local path, ``file://``, ``s3://``) into a pyarrow filesystem + path.

Everything that persists (checkpoints, Tune results, synthetic shards) is addressed by a URI so that
the same config runs on a laptop and on a cluster. S3 endpoints and credentials come only from the
standard AWS environment variables, so AWS, MinIO, Ceph and the tests' moto server need no code
change. Writes are atomic: a reader sees the old object, the complete new one, or nothing.

An S3 endpoint that has answered this job once (this process or the one that started it) and then stops answering (refused or timed-out
connections) is taken for an outage: the operation is retried with backoff for up to
FSG_STORAGE_RETRY_S seconds (default 300), then fails naming the URI and the last error. An endpoint
that never answered is a misconfiguration and fails at once.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import posixpath
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import pyarrow.fs as pafs

StrPath = str | os.PathLike[str]


class StorageError(Exception):
    """A URI could not be read or written for a reason the caller can act on."""


class BucketNotFound(StorageError):
    """The S3 bucket named by a URI does not exist (usually a typo or a wrong endpoint)."""


class ObjectNotFound(StorageError):
    """Nothing exists at a URI whose bucket (or local parent) does."""


class EndpointUnreachable(StorageError):
    """No S3 endpoint answered (none running at AWS_ENDPOINT_URL, no network, a misspelt host)."""


class StorageOutage(EndpointUnreachable):
    """An endpoint that had answered stopped answering for longer than the retry window."""


RETRY_ENV = "FSG_STORAGE_RETRY_S"
# S3 endpoints that have answered this job, in the environment so that the processes it starts (Ray
# workers of a local cluster inherit it, a joined cluster's get it forwarded) treat an outage as one too.
ANSWERED_ENV = "FSG_S3_ANSWERED"
DEFAULT_RETRY_S = 300.0
MAX_BACKOFF_S = 8.0
_log = logging.getLogger(__name__)
T = TypeVar("T")


_no_retries: contextvars.ContextVar[bool] = contextvars.ContextVar("fsg_storage_no_retries", default=False)


@contextlib.contextmanager
def without_retries() -> Iterator[None]:
    """Storage calls in this block fail at the first outage: for a server that must answer now (503), not in minutes."""
    token = _no_retries.set(True)
    try:
        yield
    finally:
        _no_retries.reset(token)


def retry_window_s() -> float:
    """How long an S3 operation keeps retrying an outage: 0 inside `without_retries`, else FSG_STORAGE_RETRY_S or DEFAULT_RETRY_S."""
    if _no_retries.get():
        return 0.0
    raw = os.environ.get(RETRY_ENV)
    if raw is None:
        return DEFAULT_RETRY_S
    try:
        value = float(raw)
    except ValueError:
        raise StorageError(f"{RETRY_ENV}: expected seconds, got {raw!r}") from None
    if value < 0:
        raise StorageError(f"{RETRY_ENV}: expected seconds >= 0, got {raw!r}")
    return value


def _endpoint_key() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "aws"


def _has_answered(endpoint: str) -> bool:
    return endpoint in os.environ.get(ANSWERED_ENV, "").split(",")


def _mark_answered(endpoint: str) -> None:
    if not _has_answered(endpoint):
        os.environ[ANSWERED_ENV] = ",".join(filter(None, [os.environ.get(ANSWERED_ENV), endpoint]))


def _through_outages(operation: Callable[..., T]) -> Callable[..., T]:
    """Retry `operation(uri, ...)` on an S3 endpoint's outage (see the module docstring); local URIs run once."""

    @functools.wraps(operation)
    def retried(uri: StrPath, *args: object) -> T:
        if not is_remote(uri):
            return operation(uri, *args)
        endpoint, started, delay = _endpoint_key(), time.monotonic(), 0.5
        while True:
            try:
                result = operation(uri, *args)
            except EndpointUnreachable as exc:
                if not _has_answered(endpoint):
                    raise
                waited, window = time.monotonic() - started, retry_window_s()
                if waited + delay > window:
                    raise StorageOutage(
                        f"{os.fspath(uri)}: {operation.__name__} kept failing for {waited:.0f} s ({RETRY_ENV}={window:g}); last error: {exc}"
                    ) from exc
                if delay == 0.5:
                    _log.warning("%s: S3 endpoint %s not answering (%s); retrying for up to %g s", os.fspath(uri), _endpoint_name(), exc, window)
                time.sleep(delay)
                delay = min(2 * delay, MAX_BACKOFF_S)
                continue
            except (StorageError, OSError):  # an answer, if not the one hoped for
                _mark_answered(endpoint)
                raise
            _mark_answered(endpoint)
            return result

    return retried


def _split(uri: StrPath) -> tuple[str, str]:
    """Return (scheme, rest); scheme is "" for a plain local path."""
    text = os.fspath(uri)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return "", text
    if scheme not in ("file", "s3"):
        raise StorageError(f"unsupported URI scheme {scheme!r} in {text!r} (use a path, file:// or s3://)")
    return scheme, rest


def is_remote(uri: StrPath) -> bool:
    """True for object-store URIs: their paths mean nothing to another process's local disk."""
    return _split(uri)[0] == "s3"


def absolute(uri: StrPath) -> str:
    """The URI with a local path made absolute, so that another process with another working directory
    (a Ray worker) reaches the same file; `s3://` and `file://` URIs are already absolute."""
    scheme, rest = _split(uri)
    return os.path.abspath(rest) if scheme == "" else os.fspath(uri)


def join(uri: StrPath, *parts: str) -> str:
    """Append path parts with "/", keeping the scheme; a part never replaces the base (no leading /)."""
    return posixpath.join(os.fspath(uri), *(part.lstrip("/") for part in parts))


@functools.lru_cache(maxsize=None)
def _s3_filesystem(endpoint: str | None, region: str) -> pafs.S3FileSystem:
    """One S3 client per (endpoint, region): building it costs a connection pool and credential lookup."""
    if endpoint is None:
        return pafs.S3FileSystem(region=region)
    parsed = urlsplit(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise StorageError(f"S3 endpoint must be an http(s) URL like http://host:9000, got {endpoint!r}")
    # pyarrow wants host:port and the transport separately; "http://" must not be dropped silently.
    return pafs.S3FileSystem(endpoint_override=parsed.netloc, scheme=parsed.scheme, region=region)


def _endpoint_name() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS (no AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL set)"


def resolve(uri: StrPath) -> tuple[pafs.FileSystem, str]:
    """Filesystem and filesystem path for a URI: an absolute local path, or "bucket/key" for S3.

    Credentials are read by pyarrow from the standard AWS variables (AWS_ACCESS_KEY_ID, ...).
    """
    scheme, rest = _split(uri)
    if scheme == "":
        return pafs.LocalFileSystem(), os.path.abspath(rest)
    if scheme == "file":
        parsed = urlsplit(os.fspath(uri))
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"file URI names a remote host: {os.fspath(uri)!r}")
        return pafs.LocalFileSystem(), os.path.abspath(unquote(parsed.path))
    path = rest.strip("/")
    if not path:
        raise StorageError(f"no bucket in {os.fspath(uri)!r}")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return _s3_filesystem(endpoint, region), path


@contextlib.contextmanager
def _unreachable_as_storage_error(uri: StrPath) -> Iterator[None]:
    """pyarrow reports an S3 endpoint that does not answer as an OSError of several lines of AWS SDK text;
    keep one line naming the URI, the endpoint and the cause (after "... operation: ")."""
    try:
        yield
    except OSError as exc:
        text = str(exc)
        if "NETWORK_CONNECTION" not in text:
            raise
        cause = " ".join(text.partition(" operation: ")[2].split()) or " ".join(text.split())
        raise EndpointUnreachable(f"{os.fspath(uri)}: cannot reach the S3 endpoint {_endpoint_name()}: {cause}") from exc


def _raise_if_bucket_missing(uri: StrPath, filesystem: pafs.FileSystem, path: str) -> None:
    if not isinstance(filesystem, pafs.S3FileSystem):
        return
    bucket = path.split("/", 1)[0]
    with _unreachable_as_storage_error(uri):
        missing = filesystem.get_file_info(bucket).type == pafs.FileType.NotFound
    if missing:
        raise BucketNotFound(f"S3 bucket {bucket!r} does not exist (while accessing {os.fspath(uri)})")


@contextlib.contextmanager
def _translated_errors(uri: StrPath, filesystem: pafs.FileSystem, path: str) -> Iterator[None]:
    """Turn pyarrow's OSErrors into EndpointUnreachable / BucketNotFound / ObjectNotFound.

    pyarrow reports a missing key and a missing bucket with the same FileNotFoundError ("Path does
    not exist 'bucket/key'"), and a write to a missing bucket as a plain OSError whose text depends on
    the call. Asking S3 whether the bucket exists is the only reliable way to tell them apart.
    """
    try:
        with _unreachable_as_storage_error(uri):
            yield
    except OSError as exc:
        _raise_if_bucket_missing(uri, filesystem, path)
        if isinstance(exc, FileNotFoundError):
            raise ObjectNotFound(f"no such file or object: {os.fspath(uri)}") from exc
        raise


@_through_outages
def read_bytes(uri: StrPath) -> bytes:
    """Whole content of a file or object."""
    filesystem, path = resolve(uri)
    with _translated_errors(uri, filesystem, path), filesystem.open_input_stream(path) as stream:
        return stream.read()


def _write_local_atomically(path: str, data: bytes) -> None:
    """Write a uniquely named sibling temp file, fsync it, then rename it over the target."""
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    temp = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temp, "xb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
        raise


@_through_outages
def write_bytes(uri: StrPath, data: bytes) -> None:
    """Write atomically: no reader ever sees a half-written file under the final name.

    Local: temp file in the same directory, then os.replace (parent directories are created).
    S3: one output stream given the whole payload; S3 publishes the object only when close()
    completes the upload, and pyarrow does not complete an upload whose parts failed.
    """
    filesystem, path = resolve(uri)
    if isinstance(filesystem, pafs.LocalFileSystem):
        _write_local_atomically(path, data)
        return
    with _translated_errors(uri, filesystem, path), filesystem.open_output_stream(path) as stream:
        stream.write(data)


@_through_outages
def exists(uri: StrPath) -> bool:
    """Whether a file, object or directory (prefix) exists; a missing bucket raises BucketNotFound.

    Raising there keeps a misspelt bucket from reading as "nothing saved yet, start from scratch".
    """
    filesystem, path = resolve(uri)
    with _unreachable_as_storage_error(uri):
        found = filesystem.get_file_info(path).type != pafs.FileType.NotFound
    if found:
        return True
    if "/" in path:
        _raise_if_bucket_missing(uri, filesystem, path)
    return False


@_through_outages
def is_dir(uri: StrPath) -> bool:
    """Whether a local directory or a non-empty S3 prefix is at the URI."""
    filesystem, path = resolve(uri)
    with _unreachable_as_storage_error(uri):
        return filesystem.get_file_info(path).type == pafs.FileType.Directory


@_through_outages
def list_dir(uri: StrPath) -> list[str]:
    """Sorted base names of the direct children; [] when the directory or prefix does not exist."""
    filesystem, path = resolve(uri)
    with _unreachable_as_storage_error(uri):
        infos = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    if not infos:
        _raise_if_bucket_missing(uri, filesystem, path)
    return sorted(info.base_name for info in infos)


@_through_outages
def delete(uri: StrPath) -> None:
    """Delete a file or object, or a whole directory / prefix (e.g. an old checkpoint)."""
    filesystem, path = resolve(uri)
    with _translated_errors(uri, filesystem, path):
        if filesystem.get_file_info(path).type == pafs.FileType.Directory:
            filesystem.delete_dir(path)
        else:
            filesystem.delete_file(path)


@_through_outages
def makedirs(uri: StrPath) -> None:
    """Create a directory and its parents (on S3: empty "dir/" marker objects); no error if present."""
    filesystem, path = resolve(uri)
    with _translated_errors(uri, filesystem, path):
        filesystem.create_dir(path, recursive=True)
