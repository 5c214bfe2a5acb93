"""Two-stage search's catalog loading without the embeddings in memory (no Ray): the
frames file is written from the version's parts as they are read, each track checked."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dvamn.catalog_format import CATALOG_SCHEMA, resolve_catalog
from dvamn.parquet_parts import part_files
from dvamn.pipeline.catalog import write_catalog_tables
from dvamn.schema import rows_to_table
from dvamn.serving.catalog_store import CatalogIntegrityError, load_catalog
from dvamn.serving.matcher import Matcher, unit_bank_on_disk
from tests.test_catalog_versions import tracks_table
from tests.test_search import (
    SETTINGS,
    _Model,
    one_thread,  # noqa: F401 - autouse: one math thread, as a replica
)

META = {"audio_embedding_kind": "logmel"}


@pytest.fixture
def catalog_root(tmp_path):
    root = str(tmp_path / "catalog")
    # Tracks of several lengths (the frames file is padded), 60 frames and more: the
    # index's segments are 40 frames.
    tables = [tracks_table(6, seed=s, frames=n) for s, n in enumerate((60, 85, 110))]
    import pyarrow as pa
    import pyarrow.compute as pc

    for k, table in enumerate(tables):  # distinct ids across the three tables
        ids = pc.binary_join_element_wise(pa.scalar(f"{k}-"), table["track_id"], "")
        tables[k] = table.set_column(0, "track_id", ids)
    write_catalog_tables(root, pa.concat_tables(tables))
    return root


def test_a_streamed_catalog_gives_the_frames_file_of_one_in_memory(catalog_root):
    streamed = load_catalog(catalog_root, embeddings=False)
    whole = load_catalog(catalog_root)
    assert streamed.embeddings.size == 0 and streamed.nbytes < whole.nbytes / 100
    with pytest.raises(ValueError, match="loaded without its embeddings"):
        streamed.track_embedding(0)
    assert np.array_equal(streamed.lengths, whole.lengths)
    assert streamed.version == whole.version
    a = unit_bank_on_disk(streamed, None, None, chunk_tracks=4)  # several chunks
    b = unit_bank_on_disk(whole, None, None)
    assert torch.equal(a.tracks, b.tracks) and torch.equal(a.lengths, b.lengths)


def test_a_two_stage_matcher_on_a_streamed_catalog_ranks_as_on_one_in_memory(catalog_root):
    fast = Matcher(
        _Model(), META, load_catalog(catalog_root, embeddings=False), "cpu", "cosine",
        "two-stage", index_settings=SETTINGS,
    )  # fmt: skip
    held = Matcher(
        _Model(), META, load_catalog(catalog_root), "cpu", "cosine", "two-stage",
        index_settings=SETTINGS,
    )  # fmt: skip
    whole = load_catalog(catalog_root)
    query = whole.track_embedding(7)[10:55] + 0.1
    assert [m.to_dict() for m in fast.rank(query, 5)] == [m.to_dict() for m in held.rank(query, 5)]


def test_a_shard_streams_only_its_tracks(catalog_root):
    whole = load_catalog(catalog_root)
    shard = load_catalog(catalog_root, shard=(1, 3), embeddings=False)
    rows = dict(shard.iter_embeddings())
    assert sorted(rows) == list(range(len(shard)))
    for row, embedding in rows.items():
        np.testing.assert_array_equal(embedding, whole.track_embedding(shard.shard_start + row))


def _rewrite_part(catalog_root, change) -> None:
    """Replace the version's tracks part by ``change(table)`` (a file altered on disk)."""
    _, _, version = resolve_catalog(catalog_root)
    [path] = part_files(f"{version}/tracks")
    pq.write_table(change(pq.read_table(path)), path)


@pytest.mark.parametrize("alteration", ["values", "length"])
def test_frames_changed_after_the_load_are_refused_naming_the_track(catalog_root, alteration):
    streamed = load_catalog(catalog_root, embeddings=False)

    def change(table):
        rows = table.to_pylist()
        embedding = np.asarray(rows[2]["embedding"], np.float32)
        embedding = embedding[:-1] if alteration == "length" else embedding + 1.0
        rows[2]["embedding"] = embedding  # its embedding_sha256 is left as it was
        return rows_to_table(rows, CATALOG_SCHEMA)

    _rewrite_part(catalog_root, change)
    problem = "has 59 frames" if alteration == "length" else "does not match its embedding_sha256"
    with pytest.raises(CatalogIntegrityError, match=f"track '{streamed.track_ids[2]}' {problem}"):
        unit_bank_on_disk(streamed, None, None)
