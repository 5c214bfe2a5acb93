"""Hostile media files: every limit is checked on what decodes, never on the header alone.

Each hostile file is built here (no binary blobs in the repo): Matroska with MJPEG frames
of sizes the header does not declare, a patched duration over long audio, a lying or
excessive frame rate, a symlinked secret. Each test asserts the clear error (or HTTP
status), and where the issue measured a blow-up, the peak-RSS growth of the action in a
fresh subprocess (``tests/support/memory.py``): at most a small multiple of the input's
size plus a constant for the decoder's own buffers.
"""

import fractions
import io
import struct
import time
from pathlib import Path

import av
import numpy as np
import pytest

from dvamn.media import (
    InconsistentMediaError,
    MediaDeadlineError,
    MediaError,
    MediaLimitError,
    MediaReader,
)
from tests.support.memory import measure_action

SECRET = "AKIAHOSTILE-sk-live-5ecr3t-9f3b27"
# Memory allowed on top of the input's own size for one action: codec buffers and a few
# small frames (the cases grew by 36.6 MiB and 1.27 GB).
MEMORY_CONSTANT_MB = 24.0


def mjpeg_mkv(
    sizes,
    fps: float = 10.0,
    frame_step_s: "float | None" = None,
    audio_s: float = 0.0,
    audio_rate_hz: int = 16_000,
) -> bytes:
    """Matroska of MJPEG frames of ``sizes`` [(w, h)], frame k at ``k * frame_step_s``
    (default ``1 / fps``) and ``fps`` as the declared rate; optional silent FLAC.

    Each size gets its own encoder and the packets are muxed into one stream declared
    at the first size: the header (and FFmpeg's probe of the first frame) says
    ``sizes[0]`` whatever the later frames are.
    """
    step_s = 1.0 / fps if frame_step_s is None else frame_step_s
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as out:
        video = out.add_stream("mjpeg", rate=fractions.Fraction(fps).limit_denominator(1000))
        video.width, video.height = sizes[0]
        video.pix_fmt = "yuvj420p"
        video.time_base = fractions.Fraction(1, 1000)
        audio = out.add_stream("flac", rate=audio_rate_hz, layout="mono") if audio_s else None
        encoders = {}
        for k, (width, height) in enumerate(sizes):
            encoder = encoders.get((width, height))
            if encoder is None:
                encoder = encoders[(width, height)] = av.CodecContext.create("mjpeg", "w")
                encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuvj420p"
                encoder.time_base = fractions.Fraction(1, 1000)
                encoder.open()
            pixels = np.full((height, width, 3), 60 + (k % 5) * 30, np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format="yuvj420p")
            for packet in encoder.encode(frame):
                packet.stream = video
                packet.pts = packet.dts = round(k * step_s * 1000)
                packet.time_base = fractions.Fraction(1, 1000)
                out.mux(packet)
        if audio is not None:
            silence = np.zeros((1, 4096), np.int16)
            for start in range(0, int(audio_s * audio_rate_hz), 4096):
                frame = av.AudioFrame.from_ndarray(silence, format="s16", layout="mono")
                frame.sample_rate = audio_rate_hz
                frame.pts = start
                for packet in audio.encode(frame):
                    out.mux(packet)
            for packet in audio.encode(None):
                out.mux(packet)
    return buffer.getvalue()


def patch_mkv_duration(data: bytes, seconds: float) -> bytes:
    """Overwrite the Segment Info Duration (EBML id 0x4489, an 8-byte float in ms)."""
    key = b"\x44\x89\x88"
    assert data.count(key) == 1, "expected one 8-byte Duration element"
    at = data.index(key) + len(key)
    return data[:at] + struct.pack(">d", seconds * 1000.0) + data[at + 8 :]


def decode_all(source, **kwargs) -> None:
    with MediaReader(source, **kwargs) as reader:
        for _ in reader.frame_batches(16):
            pass
        if kwargs.get("require_audio", True):
            reader.audio()


def measured_decode(path: Path, **kwargs):
    """Open ``path`` and decode it all (frames in batches of 16, then the audio) in a
    fresh process; returns its MeasuredAction."""
    return measure_action(
        setup=f"from tests.security.test_hostile_media import decode_all\npath = {str(path)!r}",
        action=f"decode_all(path, **{kwargs!r})",
        reset_peak=True,
    )


def assert_bounded(measured, input_bytes: int, multiple: float = 4.0) -> None:
    limit_mb = multiple * input_bytes / 2**20 + MEMORY_CONSTANT_MB
    assert measured.growth_mb < limit_mb, (
        f"peak RSS grew {measured.growth_mb:.1f} MB for a {input_bytes / 2**20:.2f} MB input "
        f"(limit {limit_mb:.1f} MB)"
    )


# ----------------------------------------------------------------- item 2: frame size


@pytest.fixture(scope="module")
def lying_size(tmp_path_factory) -> Path:
    """The issue's case: the header says 64x64, the frames after the first are 3000x3000
    (16 of them: on main, one 16-frame batch of 411 MiB)."""
    path = tmp_path_factory.mktemp("hostile") / "lying-size.mkv"
    path.write_bytes(mjpeg_mkv([(64, 64)] + [(3000, 3000)] * 16))
    return path


def test_frames_larger_than_the_header_are_refused_before_they_are_allocated(lying_size):
    with pytest.raises(InconsistentMediaError) as caught:
        decode_all(str(lying_size), require_audio=False)
    message = str(caught.value)
    assert str(lying_size) in message and "video frame 1 " in message and "64x64" in message
    assert "larger than the header" in message
    measured = measured_decode(lying_size, require_audio=False)
    assert measured.error_type == "InconsistentMediaError"
    # One decoded 3000x3000 frame alone would be 13 MB (and 27 MB as BGR).
    assert measured.growth_mb < 10, measured
    assert_bounded(measured, lying_size.stat().st_size)


def test_a_frame_slightly_larger_than_the_header_is_named_with_its_size(tmp_path):
    # Within the decoder's alignment margin: the per-frame check names the exact size.
    path = tmp_path / "bigger.mkv"
    path.write_bytes(mjpeg_mkv([(64, 64), (64, 64), (96, 80)]))
    with pytest.raises(InconsistentMediaError, match=r"at video frame 2, from 64x64 to 96x80"):
        decode_all(str(path), require_audio=False)


def test_decoded_frames_over_the_pixel_limit_are_refused(tmp_path):
    # The header's 64x64 is within the limit; frame 2 is not (but within the decoder's
    # margin, so the per-frame check is what refuses it).
    path = tmp_path / "big.mkv"
    path.write_bytes(mjpeg_mkv([(64, 64), (64, 64), (96, 80)]))
    with pytest.raises(
        MediaLimitError, match=r"decodes, at frame 2, a 96x80 frame, over the limit of 6,000"
    ):
        decode_all(str(path), require_audio=False, max_frame_pixels=6_000)


def test_a_first_frame_over_the_limit_fails_the_probe_without_being_decoded(tmp_path):
    # Every frame is 3000x3000: FFmpeg's probe itself is held to the limit on open.
    path = tmp_path / "all-big.mkv"
    path.write_bytes(mjpeg_mkv([(3000, 3000)] * 4))
    with pytest.raises(MediaError, match="over the limit of 1,000,000 pixels"):
        MediaReader(str(path), require_audio=False, max_frame_pixels=1_000_000)
    measured = measure_action(
        setup=f"from dvamn.media import MediaReader\npath = {str(path)!r}",
        action="MediaReader(path, require_audio=False, max_frame_pixels=1_000_000)",
        reset_peak=True,
    )
    assert measured.error_type == "MediaError" and measured.growth_mb < 10, measured


@pytest.fixture(scope="module")
def size_change(tmp_path_factory) -> Path:
    """320x240 for 5 frames, then 160x120: on main, np.stack raised mid-batch (a 500)."""
    path = tmp_path_factory.mktemp("hostile") / "size-change.mkv"
    path.write_bytes(mjpeg_mkv([(320, 240)] * 5 + [(160, 120)] * 5))
    return path


def test_a_frame_size_change_mid_stream_is_a_clear_error(size_change):
    with pytest.raises(InconsistentMediaError) as caught:
        decode_all(str(size_change), require_audio=False)
    message = str(caught.value)
    assert "changes mid-stream at video frame 5, from 320x240 to 160x120" in message
    assert str(size_change) in message
    measured = measured_decode(size_change, require_audio=False)
    assert measured.error_type == "InconsistentMediaError"
    assert_bounded(measured, size_change.stat().st_size)


# ----------------------------------------------------------------- item 4: audio


@pytest.fixture(scope="module")
def long_audio(tmp_path_factory) -> Path:
    """The issue's case: a header patched to 13.5 s over 600 s of silent FLAC (on main
    the reader kept 36.6 MiB of audio)."""
    data = mjpeg_mkv([(64, 64)] * 135, fps=10.0, audio_s=600.0)
    path = tmp_path_factory.mktemp("hostile") / "long-audio.mkv"
    path.write_bytes(patch_mkv_duration(data, 13.5))
    return path


def test_decoded_audio_stops_at_the_header_duration_plus_slack(long_audio):
    from dvamn.media import DURATION_SLACK_S

    with MediaReader(str(long_audio)) as reader:
        assert reader.info.duration_s == pytest.approx(13.5)
        for _ in reader.frame_batches(16):
            pass
        audio = reader.audio()
    assert len(audio) <= (13.5 + DURATION_SLACK_S) * 16_000
    assert len(audio) >= 13.5 * 16_000
    measured = measured_decode(long_audio)
    assert measured.error_type is None, measured
    # 600 s of 16 kHz float32 would be 36.6 MiB; 14.5 s is 0.9 MiB.
    assert measured.growth_mb < 12, measured
    assert_bounded(measured, long_audio.stat().st_size)


def test_without_require_audio_the_audio_is_neither_demuxed_nor_decoded(long_audio):
    with MediaReader(str(long_audio), require_audio=False) as reader:
        frames = sum(len(f) for f, _ in reader.frame_batches(16))
        assert reader._audio_samples == 0  # not one sample decoded
        assert reader._container.streams.audio[0].discard == av.stream.Discard.all
        with pytest.raises(RuntimeError, match="require_audio=False"):
            reader.audio()
    assert frames == 135


def test_a_header_over_the_maximum_duration_is_refused(long_audio):
    with pytest.raises(MediaLimitError, match=r"13.5 s long, over the limit of 10 s"):
        MediaReader(str(long_audio), max_duration_s=10)


def test_a_start_time_far_in_the_future_pads_no_more_than_the_cap(tmp_path):
    # Audio whose first timestamp is at 10^6 s would ask for 16e9 samples of padding.
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as out:
        stream = out.add_stream("pcm_s16le", rate=16_000, layout="mono")
        stream.time_base = fractions.Fraction(1, 16_000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 16_000), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 16_000
        for k in range(3):
            frame.pts = 16_000 * (10**6 + k)
            for packet in stream.encode(frame):
                out.mux(packet)
    data = patch_mkv_duration(buffer.getvalue(), 3.0)
    path = tmp_path / "late.mkv"
    path.write_bytes(data)
    from dvamn.media import read_audio

    measured = measure_action(
        setup=f"from dvamn.media import read_audio\npath = {str(path)!r}",
        action="waveform, _ = read_audio(path)\nassert len(waveform) <= 4 * 16_000",
        reset_peak=True,
    )
    assert measured.error_type in (None, "MediaError"), measured
    assert measured.growth_mb < 10, measured
    waveform, _ = read_audio(str(path))
    assert len(waveform) <= 4 * 16_000


# ----------------------------------------------------------------- item 5: rate, time


def test_a_nominal_frame_rate_over_the_limit_is_refused(tmp_path):
    path = tmp_path / "1000fps.mkv"
    path.write_bytes(mjpeg_mkv([(64, 64)] * 40, fps=1000.0))
    with pytest.raises(MediaLimitError, match=r"frame rate of 1000 fps, over the limit of 240"):
        MediaReader(str(path), require_audio=False)
    MediaReader(str(path), require_audio=False, max_fps=1000).close()  # a raised limit


def test_frames_decoding_faster_than_the_limit_are_refused_whatever_the_header(tmp_path):
    # The header declares 25 fps over 20 s; the frames come every millisecond.
    sizes = [(64, 64)] * 600
    path = tmp_path / "lying-rate.mkv"
    path.write_bytes(mjpeg_mkv(sizes + [(64, 64)], fps=25.0, frame_step_s=0.001))
    with MediaReader(str(path), require_audio=False) as reader:
        assert reader.info.nominal_fps == pytest.approx(25.0)
        with pytest.raises(MediaLimitError, match="faster than the limit of 240 fps") as caught:
            for _ in reader.frame_batches(16):
                pass
    # Refused within the first ~1.3 s of video time, long before the 600 frames.
    count = int(str(caught.value).split(": ")[1].split(" ")[0].replace(",", ""))
    assert count < 400


def test_decoded_frames_are_capped_per_reader(tmp_path):
    path = tmp_path / "frames.mkv"
    path.write_bytes(mjpeg_mkv([(64, 64)] * 30, fps=10.0))
    with pytest.raises(MediaLimitError, match="over 12 video frames decode"):
        decode_all(str(path), require_audio=False, max_decoded_frames=12)
    decode_all(str(path), require_audio=False, max_decoded_frames=30)


def test_the_deadline_stops_decoding(tmp_path):
    path = tmp_path / "slow.mkv"
    path.write_bytes(mjpeg_mkv([(64, 64)] * 30, fps=10.0))
    with pytest.raises(MediaDeadlineError, match="out of time after decoding"):
        decode_all(str(path), require_audio=False, deadline=time.monotonic() - 1.0)
    decode_all(str(path), require_audio=False, deadline=time.monotonic() + 60.0)


def test_decode_threads_are_the_readers_cpu_share(tmp_path):
    from dvamn.synth.video import encode_mp4

    path = tmp_path / "threads.mp4"  # H.264 decodes with threads (MJPEG has none)
    frames = [(np.full((64, 64, 3), 90 + k, np.uint8), k / 10) for k in range(10)]
    encode_mp4(str(path), frames, 64, 64, 10.0)
    with MediaReader(str(path), require_audio=False, decode_threads=2) as reader:
        next(iter(reader.frame_batches(4)))
        assert reader._container.streams.video[0].codec_context.thread_count == 2


def test_extraction_decodes_with_each_actors_cpu_share():
    from dvamn.pipeline.config import ExtractConfig, StageResources
    from dvamn.pipeline.extract import PoseStage

    config = ExtractConfig(
        "in",
        "out",
        pose="keypoints",
        audio="logmel",
        pose_stage=StageResources(num_cpus=3.0),
        audio_stage=StageResources(num_cpus=2.0),
    )
    assert PoseStage(config).extract.decode_threads == 3
    # With --pose keypoints the step runs inside the audio actors, with their share.
    assert PoseStage(config, config.audio_stage).extract.decode_threads == 2


# ----------------------------------------------------------------- the service


@pytest.fixture(scope="module")
def rtmo_model(tmp_path_factory) -> str:
    from tests.support.standin_pose import export_rtmo_standin

    return export_rtmo_standin(str(tmp_path_factory.mktemp("rtmo") / "rtmo.onnx"))


@pytest.fixture(scope="module")
def video_pose_factory(rtmo_model):
    model = rtmo_model

    def make(**limits):
        from dvamn.serving.queries import QueryLimits, VideoPose

        query_limits = QueryLimits(min_query_s=1.0, **limits)
        return VideoPose(
            pose="rtmo", pose_model=model, device="cpu", limits=query_limits, num_threads=1
        )

    return make


def test_service_statuses_for_hostile_videos(video_pose_factory, lying_size, size_change):
    from dvamn.serving.queries import QueryError

    pose = video_pose_factory()
    assert pose.decode_threads == 1  # the replica's CPU share
    cases = [
        (lying_size.read_bytes(), 422, "larger than the header"),
        (size_change.read_bytes(), 422, "changes mid-stream"),
        (mjpeg_mkv([(64, 64)] * 30, fps=1000.0), 413, "over the limit of 240 fps"),
        (mjpeg_mkv([(4352, 4096)] * 12), 413, "over the limit of 16,777,216 pixels"),
    ]
    for data, status, words in cases:
        with pytest.raises(QueryError) as caught:
            pose(data, name="upload.mkv")
        assert (caught.value.status, words in caught.value.detail) == (status, True), (
            caught.value.status,
            caught.value.detail,
        )


def test_service_deadline_is_a_503(video_pose_factory, tmp_path):
    from dvamn.serving.queries import QueryError
    from dvamn.synth.video import encode_mp4

    path = tmp_path / "dancer.mp4"
    frames = []
    for k in range(40):  # a bright block (the stand-in model's "person") that moves
        image = np.full((120, 160, 3), 40, np.uint8)
        image[20:100, 50 + k : 80 + k] = 220
        frames.append((image, k / 10))
    encode_mp4(str(path), frames, 160, 120, 10.0)
    data = path.read_bytes()
    pose = video_pose_factory()
    with pytest.raises(QueryError) as caught:
        pose(data, name="upload.mkv", deadline=time.monotonic() - 1)
    assert caught.value.status == 503 and "within the 120 s" in caught.value.detail
    # The time of pose estimation counts too: a deadline that expires between batches.
    slow = video_pose_factory(video_timeout_s=0.05)
    estimator = slow.estimator

    def slow_estimator(frames):
        time.sleep(0.06)
        return estimator(frames)

    slow.estimator = slow_estimator
    with pytest.raises(QueryError) as caught:
        slow(data, name="upload.mp4")
    assert caught.value.status == 503
    features, description = pose(data, name="upload.mp4")  # the same video, in time
    assert features.shape[0] == description["frames"] == 40


# ----------------------------------------------------------------- text media


def test_a_playlist_naming_other_files_is_refused_before_ffmpeg_opens_it(tmp_path):
    # FFmpeg probes an HLS playlist as media and opens the files it names.
    secret = tmp_path / "secret.ts"
    secret.write_text(SECRET)
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{secret}\n#EXT-X-ENDLIST\n"
    path = tmp_path / "upload.mp4"
    path.write_text(playlist)
    for source in (str(path), playlist.encode()):
        with pytest.raises(MediaError) as caught:
            MediaReader(source, require_audio=False)
        assert "is not a media file: it is text" in str(caught.value)
        assert SECRET not in str(caught.value) and str(secret) not in str(caught.value)


# ----------------------------------------------------------------- item 12: ids


def test_video_ids_are_never_empty(tmp_path):
    from dvamn.pipeline.config import ExtractConfig
    from dvamn.pipeline.extract import plan
    from dvamn.storage import relative_id

    assert relative_id("s3://bucket/dance/clip/", "list.txt") == "clip"
    assert relative_id("s3://bucket/dance/a/b/", "s3://bucket/dance") == "a/b"
    assert relative_id("s3://bucket/", "list.txt") == "bucket"
    with pytest.raises(ValueError, match="no file name"):
        relative_id("/", "list.txt")
    listing = tmp_path / "inputs.txt"
    listing.write_text("s3://bucket/dance/clip/\ns3://bucket/\n/\n")
    job = plan(ExtractConfig(str(listing), str(tmp_path / "out"), pose="keypoints"))
    assert [video_id for _, video_id in job.inputs] == ["clip", "bucket", "/"]


def test_a_uri_ending_in_a_slash_is_an_error_row_not_an_empty_id():
    from dvamn.pipeline.config import ExtractConfig
    from dvamn.pipeline.video import VideoPoseExtractor, process_video

    config = ExtractConfig("in", "out", pose="keypoints", audio="logmel")
    row, error = process_video("s3://bucket/dance/", "dance", VideoPoseExtractor(config), None)
    assert row is None
    assert error["video_id"] == "dance" and error["stage"] == "input"
    assert "names a directory, not a video file" in error["message"]


# ----------------------------------------------------------------- item 9 and 4: extraction


@pytest.fixture(scope="module")
def hostile_inputs(tmp_path_factory):
    """A directory of hostile inputs with a good video beside them."""
    from dvamn.synth import synthesize

    root = tmp_path_factory.mktemp("inputs")
    good = synthesize(str(root / "good"), videos=1, seconds=13.0, seed=5)
    secrets = tmp_path_factory.mktemp("secrets")
    (secrets / "credentials").write_text(f"[default]\naws_secret_access_key = {SECRET}\n")
    (secrets / "blob").write_bytes(
        b"RIFF" + SECRET.encode() * 4 + bytes(range(256)) + SECRET.encode()
    )
    (secrets / "binary").write_bytes(bytes(range(1, 40)) + SECRET.encode() * 8)
    (root / "stolen.mp4").symlink_to(secrets / "credentials")
    (root / "riff.avi").symlink_to(secrets / "blob")
    (root / "binary.mp4").symlink_to(secrets / "binary")
    (root / "long-audio.mkv").write_bytes(
        patch_mkv_duration(mjpeg_mkv([(64, 64)] * 5, audio_s=60.0), 30.0)
    )
    # Keypoints beside it, so that only its duration can fail it.
    (root / "long-audio.npz").write_bytes((root / "good" / "dance_0000.npz").read_bytes())
    return root, good


def test_extraction_errors_describe_never_quote_and_max_duration_is_an_error_row(
    ray_local, hostile_inputs, tmp_path
):
    from dvamn.pipeline.config import ExtractConfig, StageResources
    from dvamn.pipeline.extract import extract_dataset, read_table
    from dvamn.schema import ERRORS_DIR, VIDEOS_DIR

    root, good = hostile_inputs
    out = tmp_path / "features"
    config = ExtractConfig(
        input=str(root),
        out=str(out),
        pose="keypoints",
        audio="logmel",
        device="cpu",
        max_duration_s=20.0,
        audio_stage=StageResources(max_actors=1, num_cpus=1.0, videos_per_batch=4),
    )
    _, summary = extract_dataset(config)
    errors = {Path(r["uri"]).name: r for r in read_table(str(out), ERRORS_DIR).to_pylist()}
    videos = read_table(str(out), VIDEOS_DIR)
    assert videos.column("video_id").to_pylist() == ["good/dance_0000"]
    assert set(errors) == {"stolen.mp4", "riff.avi", "binary.mp4", "long-audio.mkv"}
    for name, row in errors.items():
        assert row["video_id"], row  # never empty
        for part in (SECRET, SECRET[:8], "aws_secret", "[default]"):
            assert part not in row["message"], (name, row["message"])
    assert "is not a media file: it is text" in errors["stolen.mp4"]["message"]
    assert errors["long-audio.mkv"]["error_type"] == "MediaLimitError"
    assert "30.0 s long, over the limit of 20 s" in errors["long-audio.mkv"]["message"]
    assert summary.done == 1 and summary.failed == 4


def test_a_frame_size_change_is_an_extraction_error_row(rtmo_model, tmp_path):
    from dvamn.pipeline.config import ExtractConfig
    from dvamn.pipeline.video import VideoPoseExtractor, process_video

    path = tmp_path / "size-change.mkv"
    path.write_bytes(mjpeg_mkv([(320, 240)] * 5 + [(160, 120)] * 150, audio_s=15.5))
    config = ExtractConfig("in", "out", pose="rtmo", pose_model=rtmo_model, device="cpu")
    row, error = process_video(str(path), "size-change", VideoPoseExtractor(config), None)
    assert row is None and error["stage"] == "decode"
    assert error["error_type"] == "InconsistentMediaError"
    assert "changes mid-stream at video frame 5, from 320x240 to 160x120" in error["message"]


def test_catalog_errors_describe_never_quote_and_max_duration_is_recorded(tmp_path):
    from dvamn.pipeline.catalog import TrackEmbedder

    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "token").write_text(f"GITHUB_TOKEN={SECRET}\n")
    (tmp_path / "song.mp3").symlink_to(secrets / "token")
    long_song = tmp_path / "long.mkv"
    long_song.write_bytes(patch_mkv_duration(mjpeg_mkv([(64, 64)] * 2, audio_s=30.0), 30.0))
    embedder = TrackEmbedder("logmel", None, None, "cpu", max_duration_s=20.0)
    table = embedder(
        {
            "uri": np.array([str(tmp_path / "song.mp3"), str(long_song)]),
            "track_id": np.array(["song", "long"]),
        }
    )
    rows = {r["track_id"]: r for r in table.to_pylist()}
    assert "not a media file: it is text" in rows["song"]["error_message"]
    assert SECRET not in rows["song"]["error_message"]
    assert "GITHUB" not in rows["song"]["error_message"]
    assert rows["long"]["error_type"] == "MediaLimitError"
    assert "over the limit of 20 s" in rows["long"]["error_message"]
