"""URIs everywhere: local paths, ``s3://`` (s3fs) and any other fsspec protocol.

Every stage reads and writes through these helpers so that one command runs the same on a
laptop and on a cluster, where outputs must live where every node can reach them.
"""

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
import urllib.parse
from pathlib import Path
from typing import IO, Iterable, Iterator, List, Optional, Tuple

import fsspec

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".flv")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".opus", ".wma")
LIST_FILE_EXTENSIONS = (".txt", ".lst", ".list")


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def filesystem(uri: str) -> Tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it."""
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def join(base: str, *parts: str) -> str:
    """Join URI parts with '/' (works for local paths and object-store URIs alike)."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def open_uri(uri: str, mode: str = "rb") -> IO:
    """Open a URI as a file object (use as a context manager)."""
    return fsspec.open(uri, mode).open()


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


@contextlib.contextmanager
def atomic_output(uri: str) -> Iterator[IO[bytes]]:
    """A binary file to write that appears at ``uri`` only complete, or not at all.

    Local paths (NFS included) are written to a temporary name in the same directory,
    flushed to disk and renamed over ``uri`` (``os.replace`` is atomic on POSIX, also on
    NFS). Remote URIs are spooled to a local temporary file and uploaded in one call: on
    object stores (S3, GCS) an upload becomes visible only when it is complete. If the
    block raises, nothing is written and the previous file at ``uri`` stays as it was.
    """
    fs, path = filesystem(uri)
    local = not is_remote(uri)
    parent = os.path.dirname(path) if local else None
    if local:
        os.makedirs(parent or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent or None, prefix=".part-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if local:
            os.replace(tmp, path)
        else:
            fs.put_file(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` so that readers see the old content or the new, never a part."""
    with atomic_output(uri) as f:
        f.write(data)


def _with_protocol(fs: fsspec.AbstractFileSystem, uri: str, path: str) -> str:
    if not is_remote(uri):
        return path
    protocol = uri.split("://", 1)[0]
    return f"{protocol}://{path}"


def list_inputs(spec: str, extensions: Iterable[str] = VIDEO_EXTENSIONS) -> List[str]:
    """Expand an input spec into a sorted list of URIs.

    ``spec`` is a directory or prefix (searched recursively for ``extensions``), a glob
    (``data/*.mp4``, ``s3://bucket/x/**.mp4``), a list file (one URI per line, ``#``
    comments) or a single file. Raises ``FileNotFoundError`` naming the spec when it
    matches nothing.
    """
    extensions = tuple(e.lower() for e in extensions)
    fs, path = filesystem(spec)
    if any(ch in spec for ch in "*?["):
        found = [p for p in fs.glob(path) if fs.isfile(p)]
    elif fs.isdir(path):
        found = [p for p in fs.find(path) if p.lower().endswith(extensions)]
    elif fs.isfile(path) and path.lower().endswith(LIST_FILE_EXTENSIONS):
        with fs.open(path, "rt") as f:
            lines = [ln.strip() for ln in f]
        uris = [ln for ln in lines if ln and not ln.startswith("#")]
        if not uris:
            raise FileNotFoundError(f"list file {spec} names no inputs")
        return uris
    elif fs.isfile(path):
        found = [path]
    else:
        raise FileNotFoundError(
            f"input {spec!r} does not exist (expected a directory, glob, list file or URI prefix)"
        )
    uris = sorted(_with_protocol(fs, spec, p) for p in found)
    if not uris:
        raise FileNotFoundError(
            f"input {spec!r} contains no files ending in {', '.join(extensions)}"
        )
    return uris


def relative_id(uri: str, root: str) -> str:
    """A stable id for ``uri``: its path below ``root`` without extension (or its stem).

    Never empty: trailing slashes do not count (``s3://b/x/`` is ``x``), and a URI with no
    path at all (``s3://bucket/``) is called by its host. Raises ``ValueError`` naming the
    URI when nothing is left to call it by (``/``).
    """
    uri_path = urllib.parse.urlparse(uri).path if is_remote(uri) else os.path.abspath(uri)
    uri_path = uri_path.rstrip("/")
    if not uri_path:
        host = urllib.parse.urlparse(uri).netloc if is_remote(uri) else ""
        if not host:
            raise ValueError(f"input {uri!r} has no file name to derive an id from")
        return host
    root_path = urllib.parse.urlparse(root).path if is_remote(root) else os.path.abspath(root)
    stem_path = os.path.splitext(uri_path)[0]
    root_dir = root_path if not os.path.splitext(root_path)[1] else os.path.dirname(root_path)
    if any(ch in root_dir for ch in "*?["):
        root_dir = root_dir.split("*")[0].split("?")[0].split("[")[0]
        root_dir = root_dir if root_dir.endswith("/") else os.path.dirname(root_dir)
    if root_dir and stem_path.startswith(root_dir.rstrip("/") + "/"):
        return stem_path[len(root_dir.rstrip("/")) + 1 :]
    return os.path.basename(stem_path)


def cache_dir(kind: str) -> Path:
    """``$DVAMN_CACHE`` (default ``~/.cache/dvamn``) / kind, created on demand."""
    root = Path(os.environ.get("DVAMN_CACHE", Path.home() / ".cache" / "dvamn"))
    path = root / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch_to_local(uri: str, kind: str = "weights") -> Path:
    """A local path holding the file at ``uri``: itself if local, else a cached copy.

    Remote files are copied once into ``cache_dir(kind)`` (keyed by the URI) through a
    temporary name, so that concurrent workers never read a half-written file. The copy's
    SHA-256 is recorded beside it at download and checked on every later use
    (``verify_cached_file``): a cached copy changed after download raises
    ``CachedFileError`` naming it.
    """
    if not is_remote(uri):
        path = Path(uri[len("file://") :] if uri.startswith("file://") else uri).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{uri} does not exist or is not a file")
        return path
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    target = cache_dir(kind) / f"{key}-{os.path.basename(urllib.parse.urlparse(uri).path)}"
    if target.is_file():
        verify_cached_file(target)
        return target
    fs, path = filesystem(uri)
    if not fs.isfile(path):
        raise FileNotFoundError(f"{uri} does not exist or is not a file")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
    os.close(fd)
    try:
        fs.get(path, tmp)
        digest = sha256_hex(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    record_digest(target, digest)
    log.info("fetched %s to %s (sha256 %s)", uri, target, digest)
    return target


# --- Integrity of cached downloads ------------------------------------------------------
#
# A cached weights file is checked before every use against what is known of it:
# - the SHA-256 prefix its name carries, where the URL follows torch hub's convention
#   (``vggish-10086976.pth``; rtmlib's names carry the hash of another file, not checked);
# - a known full SHA-256, where the caller has one;
# - the SHA-256 recorded beside it (``<file>.sha256``) when it was downloaded. A file
#   cached before records existed gets its record on first use (trust on first use).
# This catches a cache changed after download (a truncated copy, a swapped file). Whoever
# can write both the file and its record defeats it: weights you have verified yourself
# are best given as explicit paths or URIs in storage only you can write.

HUB_HASH_REGEX = re.compile(r"-([a-f0-9]{8,64})\.")  # torch.hub's check_hash file names
DIGEST_SUFFIX = ".sha256"


class CachedFileError(RuntimeError):
    """A cached download whose content is not what was downloaded or what its name says."""


def sha256_hex(path: os.PathLike) -> str:
    """The file's full SHA-256, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: os.PathLike, prefix_chars: int = 12) -> str:
    """The first ``prefix_chars`` hex digits of the file's SHA-256 (weights provenance)."""
    return sha256_hex(path)[:prefix_chars]


def name_hash_prefix(name: str) -> Optional[str]:
    """The SHA-256 prefix a file name carries by torch hub's convention, else None."""
    match = HUB_HASH_REGEX.search(os.path.basename(name))
    return match.group(1) if match else None


def digest_record(path: os.PathLike) -> Path:
    """Where the SHA-256 recorded at download of ``path`` is kept: ``<path>.sha256``."""
    path = Path(path)
    return path.with_name(path.name + DIGEST_SUFFIX)


def record_digest(path: os.PathLike, digest: Optional[str] = None) -> str:
    """Write ``path``'s SHA-256 (computed unless given) beside it, atomically; returns it."""
    digest = digest or sha256_hex(path)
    record = digest_record(path)
    fd, tmp = tempfile.mkstemp(dir=record.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(digest + "\n")
        os.replace(tmp, record)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return digest


def _recorded_digest(record: Path) -> Optional[str]:
    try:
        text = record.read_text().strip().lower()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise CachedFileError(f"the digest record {record} cannot be read ({err})") from err
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise CachedFileError(f"the digest record {record} does not hold a SHA-256")
    return text


def verify_cached_file(
    path: os.PathLike, expected_sha256: Optional[str] = None, name_hash: bool = False
) -> str:
    """Check a cached download before use and return its full SHA-256.

    Compares the file's SHA-256 with the prefix in its name (``name_hash``: the URL follows
    torch hub's convention), with ``expected_sha256`` when given and with the digest
    recorded at download. Without a record, one is written now (trust on first use).
    Raises ``CachedFileError`` naming the file and saying how to download it again.
    """
    path = Path(path)
    digest = sha256_hex(path)
    record = digest_record(path)
    checks = []
    prefix = name_hash_prefix(path.name) if name_hash else None
    if prefix:
        checks.append((prefix, "the prefix its file name carries"))
    if expected_sha256:
        checks.append((expected_sha256.lower(), "the known SHA-256 of this download"))
    recorded = _recorded_digest(record)
    if recorded:
        checks.append((recorded, f"the SHA-256 recorded at download in {record}"))
    for expected, what in checks:
        if not digest.startswith(expected):
            raise CachedFileError(
                f"the cached file {path} has SHA-256 {digest[:16]}..., not {expected[:16]}... "
                f"({what}): it changed after download. Delete {path} and {record} to "
                f"download it again"
            )
    if not recorded:
        record_digest(path, digest)
        log.warning("recorded the SHA-256 of %s on first use (%s)", path, digest)
    return digest


def copy_file(src: os.PathLike, dst_uri: str) -> None:
    """Copy a local file to a URI."""
    fs, path = filesystem(dst_uri)
    if not is_remote(dst_uri):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, path)
    else:
        fs.put(str(src), path)
