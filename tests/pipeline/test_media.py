"""MediaReader: frames by presentation timestamps, 16 kHz audio in the same pass, and a
clear MediaError for each kind of bad file. Inputs are small real mp4/wav files."""

import io
import tracemalloc
import wave
from pathlib import Path

import numpy as np
import pytest

from dvamn.constants import SAMPLE_RATE_HZ, num_pose_frames
from dvamn.media import MediaError, MediaReader, read_audio, read_info
from dvamn.synth.video import encode_mp4

WIDTH, HEIGHT = 160, 120
AUDIO_RATE_HZ = 22_050
TONE_HZ = 440.0


def gray_frame(level: int) -> np.ndarray:
    return np.full((HEIGHT, WIDTH, 3), level, np.uint8)


def tone(seconds: float, click_at_s: float = -1.0) -> np.ndarray:
    t = np.arange(int(seconds * AUDIO_RATE_HZ)) / AUDIO_RATE_HZ
    audio = 0.3 * np.sin(2 * np.pi * TONE_HZ * t)
    if click_at_s >= 0:  # a loud 5 ms burst to find again after decoding
        start = int(click_at_s * AUDIO_RATE_HZ)
        audio[start : start + AUDIO_RATE_HZ // 200] = 0.95
    return audio.astype(np.float32)


def write_cfr(path: Path, seconds: float, fps: float = 25.0, audio: bool = True, **kw) -> Path:
    count = int(round(seconds * fps))
    frames = ((gray_frame(40 + (k % 20) * 8), k / fps) for k in range(count))
    encode_mp4(
        str(path),
        frames,
        WIDTH,
        HEIGHT,
        fps,
        audio=tone(seconds, click_at_s=1.0) if audio else None,
        sample_rate_hz=AUDIO_RATE_HZ,
        **kw,
    )
    return path


# Irregular frame times (s): gaps of 30-170 ms; frame k is gray level 10 + 9k.
VFR_TIMES_S = (0.0, 0.03, 0.2, 0.23, 0.4, 0.45, 0.62, 0.7, 0.87, 0.9, 1.07, 1.2, 1.24, 1.41,
               1.5, 1.6, 1.77, 1.8, 1.95, 2.1, 2.2, 2.37, 2.5, 2.56, 2.7, 2.88, 2.95)  # fmt: skip


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def cfr_video(media_dir) -> Path:
    return write_cfr(media_dir / "cfr.mp4", seconds=3.0)


@pytest.fixture(scope="module")
def vfr_video(media_dir) -> Path:
    path = media_dir / "vfr.mp4"
    frames = ((gray_frame(10 + 9 * k), t) for k, t in enumerate(VFR_TIMES_S))
    encode_mp4(
        str(path),
        frames,
        WIDTH,
        HEIGHT,
        10.0,
        audio=tone(3.0),
        sample_rate_hz=AUDIO_RATE_HZ,
        variable_frame_rate=True,
    )
    return path


def test_info_reads_the_header(cfr_video):
    info = read_info(str(cfr_video))
    assert info.has_video and info.has_audio
    assert (info.width, info.height) == (WIDTH, HEIGHT)
    assert info.video_codec == "h264" and info.audio_codec == "aac"
    assert info.duration_s == pytest.approx(3.0, abs=0.05)
    assert info.nominal_fps == pytest.approx(25.0)


def test_variable_frame_rate_frames_follow_presentation_timestamps(vfr_video):
    with MediaReader(str(vfr_video)) as reader:
        batches = list(reader.frame_batches(batch_size=7))
        frames = np.concatenate([f for f, _ in batches])
        times = np.concatenate([t for _, t in batches])
    assert len(frames) == reader.num_frames == num_pose_frames(reader.info.duration_s)
    np.testing.assert_allclose(times, np.arange(len(frames)) / 10.0)
    for frame, time_s in zip(frames, times):
        # The frame shown at time t is the last one whose pts <= t.
        k = int(np.searchsorted(VFR_TIMES_S, time_s + 1e-9, side="right")) - 1
        shown = round((float(frame.mean()) - 10) / 9)  # H.264 moves gray levels a little
        assert shown == k, f"sample at {time_s:.1f} s shows frame {shown}, expected {k}"


def test_frame_count_batches_and_bgr_shape_for_known_duration(cfr_video):
    with MediaReader(str(cfr_video)) as reader:
        shapes = [(f.shape, f.dtype, t.dtype) for f, t in reader.frame_batches(batch_size=8)]
    assert reader.num_frames == 30
    assert [s[0][0] for s in shapes] == [8, 8, 8, 6]
    assert all(s[0][1:] == (HEIGHT, WIDTH, 3) and s[1] == np.uint8 for s in shapes)
    assert all(s[2] == np.float64 for s in shapes)


def test_audio_is_16khz_mono_float32_aligned_with_video(cfr_video):
    with MediaReader(str(cfr_video)) as reader:
        for _ in reader.frame_batches(16):
            pass
        audio = reader.audio()
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 3.0 * SAMPLE_RATE_HZ) < 0.05 * SAMPLE_RATE_HZ
    # The tone's frequency survives resampling: 440 Hz at the 16 kHz rate.
    spectrum = np.abs(np.fft.rfft(audio[: SAMPLE_RATE_HZ // 2]))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE_HZ / (SAMPLE_RATE_HZ // 2)
    assert peak_hz == pytest.approx(TONE_HZ, abs=4)
    # The click written at 1.0 s is found at 1.0 s (within 10 ms).
    click_s = np.argmax(np.abs(audio) > 0.8) / SAMPLE_RATE_HZ
    assert click_s == pytest.approx(1.0, abs=0.01)


def test_audio_alone_skips_frames_and_matches_the_single_pass(cfr_video):
    with MediaReader(str(cfr_video)) as reader:
        alone = reader.audio()
    with MediaReader(str(cfr_video)) as reader:
        for _ in reader.frame_batches(4):
            pass
        together = reader.audio()
    np.testing.assert_array_equal(alone, together)


def test_frames_stopped_early_still_give_the_whole_audio(cfr_video):
    with MediaReader(str(cfr_video)) as reader:
        next(iter(reader.frame_batches(4)))
        audio = reader.audio()
    assert abs(len(audio) - 3.0 * SAMPLE_RATE_HZ) < 0.05 * SAMPLE_RATE_HZ


def test_bytes_and_file_objects_read_like_paths(cfr_video):
    data = cfr_video.read_bytes()
    from_path, _ = read_audio(str(cfr_video))
    from_bytes, info = read_audio(data, name="upload.mp4")
    with open(cfr_video, "rb") as f:
        from_file, _ = read_audio(f)
    np.testing.assert_array_equal(from_path, from_bytes)
    np.testing.assert_array_equal(from_path, from_file)
    assert info.width == WIDTH


def test_read_audio_of_a_wav_file(media_dir):
    path = media_dir / "music.wav"
    pcm = (tone(2.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(AUDIO_RATE_HZ)
        f.writeframes(pcm.tobytes())
    audio, info = read_audio(str(path))
    assert not info.has_video and info.audio_codec.startswith("pcm")
    assert abs(len(audio) - 2.0 * SAMPLE_RATE_HZ) <= 2
    assert np.abs(audio).max() == pytest.approx(0.3, abs=0.02)


def test_frames_are_emitted_in_bounded_memory(media_dir):
    video = write_cfr(media_dir / "long.mp4", seconds=6.0, fps=30.0, audio=False)
    all_frames_bytes = num_pose_frames(6.0) * HEIGHT * WIDTH * 3
    tracemalloc.start()
    try:
        with MediaReader(str(video), require_audio=False) as reader:
            count = sum(len(frames) for frames, _ in reader.frame_batches(batch_size=4))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 60
    # Four frames a batch (plus the stacked copy and one held frame), not all sixty.
    assert peak < 0.3 * all_frames_bytes, f"peak {peak} B for {all_frames_bytes} B of frames"


# ----------------------------------------------------------------- bad inputs


def expect_media_error(source, text: str, **kwargs) -> str:
    with pytest.raises(MediaError) as caught:
        with MediaReader(source, **kwargs) as reader:
            for _ in reader.frame_batches(16):
                pass
            reader.audio()
    message = str(caught.value)
    assert text in message
    return message


def test_missing_file(media_dir):
    expect_media_error(str(media_dir / "nope.mp4"), "does not exist")


def test_zero_byte_file(media_dir):
    path = media_dir / "empty.mp4"
    path.write_bytes(b"")
    message = expect_media_error(str(path), "is empty (0 bytes)")
    assert "empty.mp4" in message


def test_text_file_named_mp4(media_dir):
    path = media_dir / "notes.mp4"
    path.write_text("hello, this is not a video\n")
    expect_media_error(str(path), "is not a media file: it is text")


def test_random_bytes_are_not_media():
    garbage = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    expect_media_error(garbage, "not a media file", name="garbage.mp4")


def test_truncated_file_with_index_first(media_dir):
    path = write_cfr(media_dir / "fast.mp4", seconds=3.0, faststart=True)
    data = path.read_bytes()
    cut = media_dir / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    expect_media_error(str(cut), "truncated or corrupt")


def test_truncated_file_with_index_last_has_no_header(cfr_video, media_dir):
    data = cfr_video.read_bytes()
    cut = media_dir / "cut_no_index.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    expect_media_error(str(cut), "truncated or corrupt: it starts like a media file")


def test_corrupt_middle(media_dir):
    path = write_cfr(media_dir / "fast2.mp4", seconds=3.0, faststart=True)
    data = bytearray(path.read_bytes())
    a, b = int(len(data) * 0.4), int(len(data) * 0.6)
    data[a:b] = np.random.default_rng(1).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    bad = media_dir / "corrupt.mp4"
    bad.write_bytes(bytes(data))
    expect_media_error(str(bad), "truncated or corrupt")


def test_no_audio_track(media_dir):
    path = write_cfr(media_dir / "silent.mp4", seconds=1.0, audio=False)
    expect_media_error(str(path), "has no audio track")
    with MediaReader(str(path), require_audio=False) as reader:  # a silent query is fine
        assert sum(len(f) for f, _ in reader.frame_batches(8)) == 10


def test_resolution_over_the_limit(cfr_video):
    expect_media_error(str(cfr_video), "160x120 frame, over the limit", max_frame_pixels=10_000)


def test_too_short(cfr_video):
    expect_media_error(
        str(cfr_video), "3.0 s long, shorter than the 12 s needed", min_duration_s=12
    )


def test_audio_file_has_no_video_frames(media_dir):
    data = io.BytesIO()
    with wave.open(data, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16_000)
        f.writeframes(np.zeros(16_000, "<i2").tobytes())
    expect_media_error(data.getvalue(), "has no video stream")


def test_stereo_is_averaged_to_mono(media_dir):
    path = media_dir / "stereo.wav"
    left = (tone(1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(2)
        f.setsampwidth(2)
        f.setframerate(AUDIO_RATE_HZ)
        f.writeframes(np.stack([left, np.zeros_like(left)], 1).tobytes())  # L, R interleaved
    audio, _ = read_audio(str(path))
    assert np.abs(audio).max() == pytest.approx(0.15, abs=0.01)  # (0.3 + 0) / 2
