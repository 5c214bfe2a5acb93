"""The extraction job end to end on synthetic videos: every input accounted for, reruns,
stand-in rtmlib and VGGish models through the user's flags, and S3 in and out."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from dvamn.audio.onset import ONSET_KIND
from dvamn.cli import main as dvamn_main
from dvamn.constants import EMBEDDING_DIM, POSE_FEATURES, num_audio_frames, num_pose_frames
from dvamn.pipeline.config import ExtractConfig, StageResources
from dvamn.pipeline.extract import extract_dataset, read_table
from dvamn.schema import ERRORS_DIR, VIDEO_SCHEMA, VIDEOS_DIR
from tests.pipeline.conftest import EXTRACT_SECONDS as SECONDS
from tests.support.console import ray_internal_lines

# What a user must be able to read in the error message of each kind of bad input.
EXPECTED_ERRORS = {
    "zero_byte": ("decode", "empty"),
    "not_media": ("decode", "not a"),
    "truncated": ("decode", "truncated"),
    "corrupt": ("decode", ""),
    "no_audio": ("decode", "audio"),
    "short": ("input", "12 s"),
    "nobody": ("pose", "nobody"),
    "huge": ("decode", "pixels"),
}


# small_config's settings as `dvamn extract` flags.
SMALL_FLAGS = (
    "--pose", "keypoints", "--audio", "logmel", "--device", "cpu",
    "--pose-actors", "2", "--pose-cpus", "0.5",
    "--audio-actors", "1", "--audio-cpus", "0.5", "--audio-batch", "4",
)  # fmt: skip


def small_config(input_dir, out, **overrides) -> ExtractConfig:
    values = dict(
        input=str(input_dir),
        out=str(out),
        pose="keypoints",
        audio="logmel",
        device="cpu",
        pose_stage=StageResources(min_actors=1, max_actors=2, num_cpus=0.5),
        audio_stage=StageResources(min_actors=1, max_actors=1, num_cpus=0.5, videos_per_batch=4),
    )
    values.update(overrides)
    return ExtractConfig(**values)


def test_every_input_is_a_video_row_or_an_error_row_and_reruns_finish_the_rest(
    ray_local, synth_dir, tmp_path, capsys
):
    data, result = synth_dir
    out = tmp_path / "features"
    total = len(result.videos) + len(result.broken)

    # A first run that stops early (only 4 inputs) stands in for an interrupted job.
    _, first = extract_dataset(small_config(data, out, limit=4))
    assert first.done + first.failed == 4

    dataset, summary = extract_dataset(small_config(data, out))
    assert summary.already_done == first.done
    assert summary.inputs == total
    # The summary comes from the Parquet footers of this run's parts.
    assert summary.done == len(result.videos) - first.done
    assert summary.failed == len(result.broken)  # earlier failures are retried
    assert summary.pose_frames == summary.done * num_pose_frames(SECONDS)
    assert summary.media_hours * 3600 == pytest.approx(summary.done * SECONDS, abs=0.5)
    assert summary.audio_worker_peak_rss_mb > 50 and summary.pose_worker_peak_rss_mb > 50
    assert (summary.videos_total, summary.errors_total) == (len(result.videos), len(result.broken))
    # Keypoint files need no pose actors: Ray Data fused the pose step into the audio actors.
    assert "MapBatches(pose_from_keypoint_files)->MapBatches(AudioStage)" in dataset.stats()

    videos = read_table(str(out), VIDEOS_DIR)
    errors = read_table(str(out), ERRORS_DIR)
    assert videos.num_rows == len(result.videos)
    assert errors.num_rows == len(result.broken)
    assert set(videos.column("uri").to_pylist()).isdisjoint(errors.column("uri").to_pylist())
    assert (
        len(set(videos.column("uri").to_pylist()) | set(errors.column("uri").to_pylist())) == total
    )

    by_uri = {r["uri"]: r for r in errors.to_pylist()}
    for uri, kind in result.broken:
        stage, words = EXPECTED_ERRORS[kind]
        row = by_uri[uri]
        assert row["stage"] == stage, (kind, row)
        assert words in row["message"].lower(), (kind, row["message"])

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["videos"] == len(result.videos)
    assert manifest["counts"]["errors"] == len(result.broken)
    assert manifest["options"]["pose"] == "keypoints"

    # The returned Dataset holds this run's rows, in the Parquet schema.
    rows = dataset.take_all()
    assert len(rows) == len(result.videos) - first.done
    assert dataset.schema().names == VIDEO_SCHEMA.names
    for row in videos.to_pylist():
        pose = np.asarray(row["pose"], np.float32)
        audio = np.asarray(row["audio_embedding"], np.float32)
        assert pose.shape == (num_pose_frames(SECONDS), POSE_FEATURES)
        assert audio.shape == (num_audio_frames(SECONDS), EMBEDDING_DIM)
        # The onset channel: one value a pose frame; the synthetic music has hits in it.
        onset = np.asarray(row["audio_onset"], np.float32)
        assert onset.shape == (num_pose_frames(SECONDS),) and row["audio_onset_kind"] == ONSET_KIND
        assert np.all(np.isfinite(onset)) and onset.min() >= 0 and onset.max() > 0
        assert row["pose_model"] == "keypoints" and row["audio_embedding_kind"] == "logmel"
        assert 0.0 <= row["missing_fraction"] < 0.5

    # A rerun with nothing new retries only the failures, which replace the old errors.
    # Through the command line: its own stage line and summary, and none of Ray's lines.
    capsys.readouterr()
    assert dvamn_main(["extract", str(data), "--out", str(out), *SMALL_FLAGS]) == 0
    shown = capsys.readouterr()
    printed = shown.out
    assert not ray_internal_lines(shown.out + shown.err), shown.out + shown.err
    assert f"== extract pose and audio features of {data} (Ray Data)" in printed
    assert "done in" in printed and "extraction summary" in printed
    assert f"{total} ({len(result.videos)} already done, skipped)" in printed
    assert f"0 done, {len(result.broken)} failed" in printed
    assert f"{len(result.videos)} videos in {out}/videos" in printed
    assert f"{len(result.broken)} errors in {out}/errors" in printed
    assert read_table(str(out), ERRORS_DIR).num_rows == len(result.broken)
    assert read_table(str(out), VIDEOS_DIR).num_rows == len(result.videos)


def test_standin_rtmo_and_vggish_load_through_the_user_flags(ray_local, synth_dir, tmp_path):
    from tests.support.standin_pose import export_rtmo_standin
    from tests.support.standin_vggish import save_vggish_standin

    data, result = synth_dir
    model = tmp_path / "rtmo-standin.onnx"
    export_rtmo_standin(model)
    weights, pca = save_vggish_standin(tmp_path / "vggish")
    listing = tmp_path / "inputs.txt"
    listing.write_text(result.videos[0] + "\n")

    from dvamn.cli import main

    code = main(
        [
            "extract",
            str(listing),
            "--out",
            str(tmp_path / "out"),
            "--pose",
            "rtmo",
            "--pose-model",
            str(model),
            "--audio",
            "vggish",
            "--vggish-weights",
            str(weights),
            "--vggish-pca",
            str(pca),
            "--device",
            "cpu",
            "--pose-cpus",
            "0.5",
            "--audio-cpus",
            "0.5",
        ]
    )
    assert code == 0
    videos = read_table(str(tmp_path / "out"), VIDEOS_DIR)
    assert videos.num_rows == 1
    row = videos.to_pylist()[0]
    assert row["pose_model"].startswith("rtmo") and str(model) in row["pose_weights"]
    assert row["audio_embedding_kind"] == "vggish" and str(weights) in row["audio_weights"]
    audio = np.asarray(row["audio_embedding"])
    assert audio.min() >= 0 and audio.max() <= 255 and np.all(audio == np.round(audio))


def test_missing_vggish_weights_stop_the_job_before_any_work(tmp_path, synth_dir):
    from dvamn.audio import WeightsUnavailableError

    data, _ = synth_dir
    config = small_config(
        data, tmp_path / "out", audio="vggish", vggish_weights=str(tmp_path / "none.pth")
    )
    with pytest.raises(WeightsUnavailableError, match="--vggish-weights"):
        extract_dataset(config)
    assert not (tmp_path / "out").exists()


def test_extract_reads_and_writes_s3(ray_local, s3_bucket, tmp_path):
    import s3fs

    from dvamn.synth import synthesize

    synthesize(f"{s3_bucket}/videos", videos=2, seconds=SECONDS, seed=5)
    out = f"{s3_bucket}/features"
    _, summary = extract_dataset(small_config(f"{s3_bucket}/videos", out))
    assert (summary.done, summary.failed) == (2, 0)
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    parts = fs.glob(f"{out}/{VIDEOS_DIR}/*.parquet")
    assert parts
    total = sum(pq.ParquetFile(fs.open(p, "rb")).metadata.num_rows for p in parts)
    assert total == 2
    assert fs.exists(f"{out}/manifest.json")


def test_a_rerun_refuses_inputs_whose_ids_out_already_holds_from_another_uri(tmp_path):
    """The input folder moved (or another dataset's OUT): extracting its videos beside the
    old rows would hold each video twice, so the plan stops, naming the clash (no Ray)."""
    import pyarrow as pa

    from dvamn.parquet_parts import PART_SUFFIX, write_part
    from dvamn.pipeline.extract import plan

    old_dir, new_dir, out = tmp_path / "old", tmp_path / "new", tmp_path / "out"
    for folder in (old_dir, new_dir):
        folder.mkdir()
        for name in ("dance_0000.mp4", "dance_0001.mp4"):
            (folder / name).write_bytes(b"not decoded by the plan")
    old_rows = pa.table({"uri": [str(old_dir / "dance_0000.mp4")], "video_id": ["dance_0000"]})
    write_part(old_rows, str(out / VIDEOS_DIR / f"part-old{PART_SUFFIX}"))

    same = plan(small_config(old_dir, out))  # the same inputs: one done, one to do
    assert (same.already_done, [vid for _, vid in same.todo]) == (1, ["dance_0001"])
    with pytest.raises(ValueError, match=r"dance_0000.*same id \(1 such input") as refused:
        plan(small_config(new_dir, out))
    assert str(old_dir / "dance_0000.mp4") in str(refused.value)
