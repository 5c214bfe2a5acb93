"""URIs everywhere: local paths, ``s3://`` (s3fs) and any other fsspec protocol.

Every stage reads and writes through these helpers so that one command runs the same on a
laptop and on a cluster, where outputs must live where every node can reach them.
"""

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.parse
from pathlib import Path
from typing import IO, Iterable, List, Tuple

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
    """A stable id for ``uri``: its path below ``root`` without extension (or its stem)."""
    uri_path = urllib.parse.urlparse(uri).path if is_remote(uri) else os.path.abspath(uri)
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
    temporary name, so that concurrent workers never read a half-written file.
    """
    if not is_remote(uri):
        path = Path(uri[len("file://") :] if uri.startswith("file://") else uri).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{uri} does not exist or is not a file")
        return path
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    target = cache_dir(kind) / f"{key}-{os.path.basename(urllib.parse.urlparse(uri).path)}"
    if target.is_file():
        return target
    fs, path = filesystem(uri)
    if not fs.isfile(path):
        raise FileNotFoundError(f"{uri} does not exist or is not a file")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
    os.close(fd)
    try:
        fs.get(path, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("fetched %s to %s", uri, target)
    return target


def file_sha256(path: os.PathLike, prefix_chars: int = 12) -> str:
    """The first ``prefix_chars`` hex digits of the file's SHA-256 (weights provenance)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:prefix_chars]


def copy_file(src: os.PathLike, dst_uri: str) -> None:
    """Copy a local file to a URI."""
    fs, path = filesystem(dst_uri)
    if not is_remote(dst_uri):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, path)
    else:
        fs.put(str(src), path)
