"""Filesystems: one `(pyarrow filesystem, path)` for a local path or an `s3://` URI, the checks
that an output location can be written before any work starts, and the redaction of credentials
from URIs before anything records or prints them."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs

from fashion_batch.errors import InputError


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or an `s3://` URI.

    S3 settings come from the standard environment, which pyarrow reads itself: the
    endpoint from AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL (for MinIO, moto, R2, ...);
    credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN) or the
    instance profile; the region from AWS_REGION / AWS_DEFAULT_REGION, else (on AWS proper) the
    bucket's own region, looked up once here.

    The filesystem is pickled to every Ray worker, as the options it was made from: the endpoint
    and the region, but not credentials from the environment (on purpose: no secrets in the
    object store), so workers must see the same AWS_* credentials (a local cluster inherits the
    driver's environment; a real one needs `runtime_env={"env_vars": ...}` or an instance
    profile, see docs/cluster.md). On AWS proper `from_uri` itself looks the bucket's region up
    (the lookup `pyarrow.fs.resolve_s3_region` does) and puts it in those options. With a custom
    endpoint it looks nothing up and the options hold no region, so a worker would take its own
    environment's; naming the driver's region in the URI (pyarrow's `region=` parameter) puts it
    in the options, and every worker signs for the same region as the driver.
    """
    if "://" in uri:
        fs, path = _from_uri(uri)
        parts = urlsplit(uri)
        if isinstance(fs, pafs.S3FileSystem) and "region" not in dict(parse_qsl(parts.query)):
            query = "&".join(q for q in (parts.query, f"region={quote(fs.region)}") if q)
            fs, path = _from_uri(urlunsplit(parts._replace(query=query)))
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def _from_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(redact_text(f"{uri}: cannot open: {e}")) from e  # e may quote the URI


def check_output_location(fs: pafs.FileSystem, output: str, uri: str) -> None:
    """Fail before any work if the output cannot be written where it is asked to go: an S3
    bucket that does not exist (or cannot be seen with these credentials), or an output path
    that is an existing file. Without this, a typo in the bucket name surfaces only when the
    first writer task fails, after the whole input has been read and embedded."""
    if isinstance(fs, pafs.S3FileSystem):
        bucket = output.split("/", 1)[0]
        try:
            info = fs.get_file_info(bucket)
        except OSError as e:
            raise InputError(f"--output {uri}: cannot access bucket {bucket!r}: {e}") from e
        if info.type != pafs.FileType.Directory:
            raise InputError(f"--output {uri}: bucket {bucket!r} does not exist")
    if file_info(fs, output, f"--output {uri}").type == pafs.FileType.File:
        raise InputError(f"--output {uri}: is a file, needs a directory")


def file_info(fs: pafs.FileSystem, path: str, label: str) -> pafs.FileInfo:
    """`fs.get_file_info(path)`; an unreachable path is an InputError that starts with `label`."""
    try:
        return fs.get_file_info(path)
    except OSError as e:
        raise InputError(f"{label}: cannot stat: {e}") from e


_SECRET_PARAM = re.compile(r"key|secret|token|password|signature|credential", re.IGNORECASE)
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


def redact(uri: str) -> str:
    """`uri` without credentials: user info (`s3://KEY:SECRET@bucket/...`) and query parameters
    that name a key, secret, token, password, signature or credential become `***`. pyarrow
    accepts credentials in both places; nothing the job records or prints may hold them. A
    wrapped URI (`--sink lancedb://s3://...`) has its inner URI redacted; `scheme:///path` keeps
    its empty host."""
    if "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    if "://" in rest:
        return f"{scheme}://{redact(rest)}"
    parts = urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "&".join(
        f"{k}=***" if _SECRET_PARAM.search(k) else f"{k}={v}"
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    out = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    if not netloc and not out.startswith(f"{parts.scheme}://"):
        out = f"{parts.scheme}://{out[len(parts.scheme) + 1 :]}"  # urlunsplit drops `//`
    return out


def redact_text(text: str) -> str:
    """`text` with every URI in it redacted (error messages, log lines, tracebacks)."""
    return _URI.sub(lambda m: redact(m.group(0)), text)
