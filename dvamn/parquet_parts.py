"""Parquet parts: the one way the pipeline and the service list, read and write them.

Extraction outputs (``OUT/videos``, ``OUT/errors``) and catalog versions (``tracks/``,
``errors/``) are directories of ``*.parquet`` parts, local or remote. Parts are written
through ``storage.atomic_output``, so a reader sees a part complete or not at all.
"""

from typing import List, Optional

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from dvamn import storage

PART_SUFFIX = ".parquet"


def part_files(uri: str) -> List[str]:
    """The filesystem paths of the parts below ``uri``, in name order; [] when ``uri``
    does not exist. Use ``storage.filesystem(uri)[0]`` to open them."""
    fs, path = storage.filesystem(uri)
    if not fs.exists(path):
        return []
    return sorted(p for p in fs.find(path) if p.endswith(PART_SUFFIX))


def read_part(fs: fsspec.AbstractFileSystem, path: str, columns: Optional[List[str]] = None):
    """One part as a table (only ``columns``, when given)."""
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=columns)


def read_parts(uri: str, columns: Optional[List[str]] = None) -> List[pa.Table]:
    """Every part below ``uri`` as one table each, in name order ([] when there are none)."""
    fs, _ = storage.filesystem(uri)
    return [read_part(fs, path, columns) for path in part_files(uri)]


def read_footer(fs: fsspec.AbstractFileSystem, path: str) -> pq.FileMetaData:
    """A part's footer (row count, key-value metadata) without reading its data."""
    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).metadata


def write_part(table: pa.Table, uri: str, row_group_size: Optional[int] = None) -> None:
    """Writes ``table`` as the part ``uri``; a crash mid-write leaves no truncated part.
    ``row_group_size``: rows a row group at most (a reader decodes a row group at once)."""
    fs, path = storage.filesystem(uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)  # remote: atomic_output makes no dirs
    with storage.atomic_output(uri) as f:
        pq.write_table(table, f, row_group_size=row_group_size)
