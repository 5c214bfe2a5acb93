"""The music catalog: audio files and extraction outputs -> tracks Parquet, errors, manifest."""

import json
import os

import av
import numpy as np
import pytest

from dvamn.constants import EMBEDDING_DIM, POSE_FEATURES, SAMPLE_RATE_HZ, num_audio_frames
from dvamn.pipeline.catalog import (
    CATALOG_ERROR_SCHEMA,
    CatalogConfig,
    build_catalog,
    is_extraction_output,
)
from dvamn.schema import VIDEO_SCHEMA, rows_to_table
from dvamn.serving.catalog_store import CatalogMismatchError, check_compatible, load_catalog
from tests.support.console import ray_internal_lines

pytestmark = pytest.mark.ray


def write_tone(path: str, seconds: float, freq_hz: float, title: str = "") -> None:
    """A mono tone with beats, encoded by PyAV (format from the extension)."""
    t = np.arange(int(seconds * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    beat = (np.sin(2 * np.pi * 2.0 * t) > 0.8).astype(np.float32)
    wave = 0.3 * np.sin(2 * np.pi * freq_hz * t) + 0.2 * beat * np.sin(2 * np.pi * 80 * t)
    samples = (wave * 32767).astype(np.int16)
    codec = {".wav": "pcm_s16le", ".flac": "flac", ".m4a": "aac", ".mp3": "libmp3lame"}[
        os.path.splitext(path)[1]
    ]
    with av.open(path, "w") as container:
        if title:
            container.metadata["title"] = title
        stream = container.add_stream(codec, rate=SAMPLE_RATE_HZ, layout="mono")
        fmt = {"aac": "fltp", "libmp3lame": "s16p"}.get(codec, "s16")
        data = samples.astype(np.float32) / 32767 if fmt == "fltp" else samples
        for start in range(0, len(data), 1024):
            frame = av.AudioFrame.from_ndarray(
                data[None, start : start + 1024], format=fmt, layout="mono"
            )
            frame.sample_rate = SAMPLE_RATE_HZ
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


@pytest.fixture(scope="module")
def music_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("music")
    (root / "rock").mkdir()
    write_tone(str(root / "a.wav"), 3.0, 440.0)
    write_tone(str(root / "rock" / "b.flac"), 4.0, 330.0, title="Song B")
    write_tone(str(root / "c.m4a"), 2.5, 550.0, title="Song C")
    write_tone(str(root / "d.mp3"), 2.0, 660.0)
    (root / "broken.mp3").write_bytes(b"ID3 this is not really an mp3 file" * 10)
    (root / "notes.txt").write_text("not music, not listed")
    return root


def test_audio_files_become_tracks_and_every_input_is_accounted_for(
    ray_local, music_dir, tmp_path, capsys
):
    out = str(tmp_path / "catalog")
    summary = build_catalog(CatalogConfig(music=str(music_dir), out=out, audio="logmel"))
    assert (summary.num_inputs, summary.num_tracks, summary.num_errors) == (5, 4, 1)

    catalog = load_catalog(out)
    assert catalog.track_ids == ["a", "c", "d", "rock/b"]  # ids: path below MUSIC, sorted
    assert catalog.titles == ["a", "Song C", "d", "Song B"]  # title tag, else the file name
    for i, seconds in enumerate([3.0, 2.5, 2.0, 4.0]):
        embedding = catalog.track_embedding(i)
        # Compressed formats decode a few ms longer (encoder priming and padding).
        assert catalog.durations_s[i] == pytest.approx(seconds, abs=0.15)
        expected = num_audio_frames(catalog.durations_s[i])
        assert embedding.shape == (expected, EMBEDDING_DIM)
        assert np.isfinite(embedding).all()
        # The rhythm term's channel, two values per audio frame, as extraction makes it.
        assert catalog.onsets[i].shape == (2 * expected,) and catalog.onsets[i].max() > 0
    assert catalog.audio_embedding_kind == "logmel"
    assert catalog.version == summary.version
    assert catalog.audio_playable.tolist() == [True] * 4  # decoded from their uris

    import pyarrow.parquet as pq

    version = os.path.join(out, "versions", summary.version_id)
    assert catalog.version_uri == version and catalog.version_id == summary.version_id
    assert (tmp_path / "catalog" / "CURRENT").read_text().strip() == summary.version_id
    errors = pq.read_table(os.path.join(version, "errors"))
    assert errors.schema.names == CATALOG_ERROR_SCHEMA.names
    assert errors["track_id"].to_pylist() == ["broken"]
    assert errors["stage"].to_pylist() == ["decode"]
    assert "broken.mp3" in errors["message"][0].as_py()

    manifest = json.loads(open(os.path.join(version, "manifest.json")).read())
    assert manifest["num_tracks"] == 4 and manifest["num_errors"] == 1
    assert manifest["num_playable"] == 4
    assert manifest["audio_embedding_kind"] == "logmel"
    assert manifest["version"] == summary.version

    # A rebuild (here through the CLI) makes a new current version with the same content
    # version; the previous one stays readable.
    from dvamn.cli import main

    capsys.readouterr()
    assert main(["catalog", str(music_dir), "--out", out, "--audio", "logmel"]) == 0
    shown = capsys.readouterr()
    printed = shown.out
    # Its own stage and summary on the console; Ray Data's bars and messages in the log file.
    assert "== embed the tracks of" in printed and "done in" in printed
    assert not ray_internal_lines(shown.out + shown.err), shown.out + shown.err
    assert f"version {summary.version}" in printed
    rebuilt = load_catalog(out)
    assert rebuilt.version_id != summary.version_id and rebuilt.version_id in printed
    assert rebuilt.track_ids == catalog.track_ids and rebuilt.version == catalog.version
    assert load_catalog(version).version_id == summary.version_id


def test_extraction_output_soundtracks_become_tracks(ray_local, tmp_path):
    extraction = tmp_path / "extracted"
    rows = []
    for i, frames in enumerate([30, 0]):  # the second video has no audio embedding
        rows.append(
            {
                "video_id": f"dance/{i}",
                "uri": f"/videos/dance/{i}.mp4",
                "duration_s": frames * 0.2,
                "width": 320,
                "height": 240,
                "pose_fps": 10.0,
                "num_pose_frames": 2 * frames,
                "pose": np.zeros((2 * frames, POSE_FEATURES), np.float32),
                "pose_confidence": np.ones(2 * frames, np.float32),
                "missing_fraction": 0.0,
                "num_audio_frames": frames,
                "audio_embedding": np.full((frames, EMBEDDING_DIM), i + 1.0, np.float32),
                "pose_model": "keypoints",
                "pose_weights": "keypoint files",
                "audio_embedding_kind": "vggish",
                "audio_weights": "vggish.pth@abc",
                "audio_onset": np.arange(2 * frames, dtype=np.float32),
                "audio_onset_kind": "logmel-flux@10Hz",
                "extracted_at": "2024-01-01T00:00:00+00:00",
            }
        )
    (extraction / "videos").mkdir(parents=True)
    import pyarrow.parquet as pq

    pq.write_table(rows_to_table(rows, VIDEO_SCHEMA), str(extraction / "videos" / "p.parquet"))
    assert is_extraction_output(str(extraction))

    out = str(tmp_path / "catalog")
    summary = build_catalog(CatalogConfig(music=str(extraction), out=out))
    assert (summary.num_inputs, summary.num_tracks, summary.num_errors) == (2, 1, 1)
    catalog = load_catalog(out)
    assert catalog.track_ids == ["dance/0"]
    assert catalog.audio_embedding_kind == "vggish"
    assert catalog.audio_weights == "vggish.pth@abc"
    # The video the extraction read is not on this machine: its audio is not playable.
    assert catalog.audio_playable.tolist() == [False] and summary.num_playable == 0
    np.testing.assert_array_equal(catalog.track_embedding(0), np.ones((30, EMBEDDING_DIM)))
    np.testing.assert_array_equal(catalog.onsets[0], np.arange(60))  # the extraction's channel

    # Serving refuses a model trained on another embedding, and names the fix.
    with pytest.raises(CatalogMismatchError, match="--audio logmel"):
        check_compatible(catalog, {"audio_embedding_kind": "logmel", "checkpoint_uri": "ck"})
    with pytest.raises(CatalogMismatchError, match="vggish-weights"):
        check_compatible(catalog, {"audio_embedding_kind": "vggish", "audio_weights": "other"})
    check_compatible(catalog, {"audio_embedding_kind": "vggish", "audio_weights": "vggish.pth@abc"})


def test_music_that_names_nothing_is_refused(ray_local, tmp_path):
    with pytest.raises(FileNotFoundError, match="no files ending in"):
        build_catalog(CatalogConfig(music=str(tmp_path), out=str(tmp_path / "c"), audio="logmel"))


def test_music_and_catalog_on_s3(ray_local, music_dir, s3_bucket):
    from dvamn import storage

    for name in ("a.wav", "rock/b.flac"):
        storage.copy_file(music_dir / name, f"{s3_bucket}/music/{name}")
    out = f"{s3_bucket}/catalog"
    summary = build_catalog(CatalogConfig(music=f"{s3_bucket}/music", out=out, audio="logmel"))
    assert (summary.num_tracks, summary.num_errors) == (2, 0)
    catalog = load_catalog(out)
    assert catalog.track_ids == ["a", "rock/b"]
    assert catalog.uris[0] == f"{s3_bucket}/music/a.wav"
    assert catalog.version == summary.version


def test_the_coarse_index_is_built_on_ray_data_as_in_one_process(ray_local, tmp_path):
    import torch

    from dvamn.model import DVAMN, DVAMNConfig, save_checkpoint
    from dvamn.search import INDEX_DIR
    from tests.test_search import index_built_in_one_go, stored_index

    music = tmp_path / "music"
    music.mkdir()
    for i, seconds in enumerate((9.0, 11.0, 13.0)):  # a segment is 8 s
        write_tone(str(music / f"t{i}.wav"), seconds, 300.0 + 110 * i)
    torch.manual_seed(0)
    model = DVAMN(DVAMNConfig(widths=(8, 8, 8), gru_hidden=8, post_gru_widths=(8, 8), fc_width=8))
    save_checkpoint(str(tmp_path / "ckpt"), model.eval(), {"audio_embedding_kind": "logmel"})
    out = str(tmp_path / "catalog")
    config = CatalogConfig(
        music=str(music), out=out, audio="logmel", index_checkpoint=str(tmp_path / "ckpt")
    )
    summary = build_catalog(config)
    assert summary.num_tracks == 3
    assert os.path.isdir(os.path.join(out, "versions", summary.version_id, INDEX_DIR))
    # Fitted here, each track encoded by a Ray Data task: the index one build would make.
    assert stored_index(out) == index_built_in_one_go(load_catalog(out), model)
