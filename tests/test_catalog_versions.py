"""Catalog versions: a build becomes current only when complete, a failed or killed build
leaves the current version as it was, and the loader refuses anything incomplete or altered.

No Ray: catalogs are published from in-memory tables through the same writer as
``dvamn catalog`` (``write_catalog_tables`` -> the version directory, manifest last, pointer).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dvamn.catalog_format import CATALOG_SCHEMA, embedding_sha256, list_versions, read_current
from dvamn.constants import EMBEDDING_DIM
from dvamn.pipeline.catalog import write_catalog_tables
from dvamn.schema import rows_to_table
from dvamn.serving.catalog_store import CatalogIntegrityError, load_catalog


def tracks_table(num_tracks: int, seed: int, kinds=("logmel",), frames: int = 20) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(num_tracks):
        embedding = rng.standard_normal((frames, EMBEDDING_DIM)).astype(np.float32)
        rows.append(
            {
                "track_id": f"t{i:03d}",
                "title": f"track {i}",
                "uri": f"/music/t{i:03d}.wav",
                "duration_s": frames * 0.2,
                "num_audio_frames": frames,
                "embedding": embedding,
                "embedding_sha256": embedding_sha256(embedding),
                "audio_embedding_kind": kinds[i % len(kinds)],
                "audio_weights": "",
                "source": "audio-file",
                "audio_playable": False,
                "cataloged_at": "",
                "audio_onset": rng.random(2 * frames).astype(np.float32),
            }
        )
    return rows_to_table(rows, CATALOG_SCHEMA)


def test_a_rebuild_is_a_new_current_version_and_the_old_one_stays_readable(tmp_path):
    root = str(tmp_path / "catalog")
    first = write_catalog_tables(root, tracks_table(3, seed=1))
    assert read_current(root) == first.version_id
    assert load_catalog(root).version == first.version

    second = write_catalog_tables(root, tracks_table(4, seed=2))
    assert second.version_id > first.version_id  # IDs sort by build time
    assert read_current(root) == second.version_id
    current = load_catalog(root)
    assert (len(current), current.version, current.version_id) == (
        4,
        second.version,
        second.version_id,
    )
    assert current.summary()["version_id"] == second.version_id
    old = load_catalog(os.path.join(root, "versions", first.version_id))
    assert (len(old), old.version) == (3, first.version)


def test_a_failed_build_leaves_the_current_version_as_it_was(tmp_path):
    root = str(tmp_path / "catalog")
    good = write_catalog_tables(root, tracks_table(3, seed=1))
    with pytest.raises(ValueError, match="mixes audio embeddings"):
        write_catalog_tables(root, tracks_table(4, seed=2, kinds=("logmel", "vggish")))
    assert read_current(root) == good.version_id
    assert list_versions(root) == [good.version_id]  # the failed version was removed
    assert load_catalog(root).version == good.version


def test_old_versions_are_pruned_past_keep_versions(tmp_path):
    root = str(tmp_path / "catalog")
    ids = [
        write_catalog_tables(root, tracks_table(2, seed=s), keep_versions=2).version_id
        for s in range(3)
    ]
    assert list_versions(root) == ids[1:]
    # A build killed before its manifest leaves an incomplete version behind; it is never
    # loaded, and the next build removes it once it is older than every version kept.
    stale = os.path.join(root, "versions", "20000101T000000000000Z-abcdef", "tracks")
    os.makedirs(stale)
    with pytest.raises(CatalogIntegrityError, match="incomplete"):
        load_catalog(os.path.dirname(stale))
    newest = write_catalog_tables(root, tracks_table(2, seed=9), keep_versions=2).version_id
    assert list_versions(root) == [ids[2], newest]


def _version(root: str) -> str:
    return os.path.join(root, "versions", read_current(root))


def test_the_loader_refuses_a_version_whose_files_changed_after_the_build(tmp_path):
    root = str(tmp_path / "catalog")
    write_catalog_tables(root, tracks_table(3, seed=1))
    tracks_file = os.path.join(_version(root), "tracks", "tracks.parquet")
    table = pq.read_table(tracks_file)

    # A track lost (a partial copy, a deleted part file): the count is not the manifest's.
    pq.write_table(table.slice(0, 2), tracks_file)
    with pytest.raises(CatalogIntegrityError, match="holds 2 tracks but its manifest says 3"):
        load_catalog(root)

    # An embedding altered in place, its stored hash left as it was.
    embedding = table["embedding"].to_pylist()
    embedding[1][0][0] += 1.0
    altered = table.set_column(
        table.schema.get_field_index("embedding"),
        "embedding",
        pa.array(embedding, CATALOG_SCHEMA.field("embedding").type),
    )
    pq.write_table(altered, tracks_file)
    with pytest.raises(CatalogIntegrityError, match="embedding of track 't001'"):
        load_catalog(root)

    # A track replaced wholesale (its hash updated too): the content version differs.
    other = tracks_table(3, seed=5)
    pq.write_table(other, tracks_file)
    with pytest.raises(CatalogIntegrityError, match="content version"):
        load_catalog(root)

    # No manifest, or a manifest of another format.
    pq.write_table(table, tracks_file)
    manifest_file = os.path.join(_version(root), "manifest.json")
    manifest = json.loads(open(manifest_file).read())
    with open(manifest_file, "w") as f:
        json.dump({**manifest, "format": "dvamn-catalog/0"}, f)
    with pytest.raises(CatalogIntegrityError, match="format 'dvamn-catalog/0'"):
        load_catalog(root)
    os.unlink(manifest_file)
    with pytest.raises(CatalogIntegrityError, match="no manifest.json"):
        load_catalog(root)


def test_the_pointer_and_older_layouts_are_checked(tmp_path):
    root = tmp_path / "catalog"
    write_catalog_tables(str(root), tracks_table(2, seed=1))
    (root / "CURRENT").write_text("../../etc\n")  # the pointer never becomes a path unchecked
    with pytest.raises(ValueError, match="does not name a catalog version"):
        load_catalog(str(root))

    legacy = tmp_path / "legacy"
    (legacy / "tracks").mkdir(parents=True)
    pq.write_table(tracks_table(2, seed=1), str(legacy / "tracks" / "part.parquet"))
    with pytest.raises(FileNotFoundError, match="layout of an older dvamn.*rebuild it"):
        load_catalog(str(legacy))
    with pytest.raises(FileNotFoundError, match="not a catalog"):
        load_catalog(str(tmp_path / "nothing"))


_KILLED_BUILDER = textwrap.dedent(
    """
    import sys
    from tests.test_catalog_versions import tracks_table
    from dvamn.pipeline.catalog import write_catalog_tables

    table = tracks_table(40, seed=3, frames=900)  # ~18 MB: the write takes a while
    print("ready", flush=True)
    while True:
        write_catalog_tables(sys.argv[1], table, keep_versions=1000)
    """
)


def test_a_build_killed_mid_write_never_becomes_current(tmp_path):
    """``kill -9`` a process that publishes versions in a loop, at once and again a moment
    later: whatever it left, the catalog's current version loads complete and intact."""
    root = str(tmp_path / "catalog")
    first = write_catalog_tables(root, tracks_table(3, seed=1))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo}
    for delay_s in (0.05, 0.4):
        proc = subprocess.Popen(
            [sys.executable, "-c", _KILLED_BUILDER, root], stdout=subprocess.PIPE, env=env
        )
        try:
            assert proc.stdout.readline().strip() == b"ready"
            time.sleep(delay_s)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        catalog = load_catalog(root)  # whichever version is current: complete, checked
        assert len(catalog) in (3, 40)
        for version in list_versions(root):
            path = os.path.join(root, "versions", version)
            if os.path.exists(os.path.join(path, "manifest.json")):
                assert len(load_catalog(path)) in (3, 40)
    assert load_catalog(os.path.join(root, "versions", first.version_id)).version == first.version


def test_a_catalog_written_before_the_onset_column_loads_without_onsets(tmp_path):
    out = str(tmp_path / "c")
    write_catalog_tables(out, tracks_table(3, seed=5))
    assert load_catalog(out).onsets[0].shape == (40,)
    # The same version's tracks as versions before issue 13 wrote them: no audio_onset.
    parts = tmp_path / "c" / "versions" / read_current(out) / "tracks"
    for part in parts.glob("*.parquet"):
        pq.write_table(pq.read_table(part).drop_columns(["audio_onset"]), part)
    catalog = load_catalog(out)
    assert catalog.track_ids == ["t000", "t001", "t002"] and catalog.onsets is None


def test_a_shard_loads_its_part_of_the_sorted_tracks_and_the_whole_version(tmp_path):
    root = str(tmp_path / "catalog")
    table = tracks_table(7, seed=3)
    # Rows out of id order: shards follow the loader's sorted order.
    write_catalog_tables(root, pa.concat_tables([table.slice(4), table.slice(0, 4)]))
    whole = load_catalog(root)
    parts = [load_catalog(root, shard=(i, 3)) for i in range(3)]
    assert [p.shard_start for p in parts] == [0, 2, 5]
    assert sum((p.track_ids for p in parts), []) == whole.track_ids
    assert np.array_equal(np.concatenate([p.embeddings for p in parts]), whole.embeddings)
    assert {p.version for p in parts} == {whole.version}  # the whole catalog's content
    with pytest.raises(ValueError, match="shard must be in"):
        load_catalog(root, shard=(3, 3))
