"""Segments of catalog tracks (dvamn.serving.audio_segments), without Ray."""

import io

import av
import numpy as np
import pytest

from dvamn.serving.audio_segments import (
    MAX_SEGMENT_S,
    SEGMENT_SAMPLE_RATE_HZ,
    TrackSource,
    check_segment,
    encode_segment,
)
from dvamn.serving.queries import QueryError


def write_wav(path: str, seconds: float, rate: int = 16000) -> np.ndarray:
    """A wav of a tone whose loudness rises with time (so a segment's place shows)."""
    t = np.arange(int(seconds * rate)) / rate
    wave = (np.sin(2 * np.pi * 440 * t) * (0.05 + 0.9 * t / seconds)).astype(np.float32)
    pcm = (wave * 32767).astype(np.int16)[None]
    with av.open(path, "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        for i in range(0, pcm.shape[1], 1600):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(pcm[:, i : i + 1600]), format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = rate, i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return wave


def decode_mp3(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name.startswith("mp3")
        assert stream.rate == SEGMENT_SAMPLE_RATE_HZ
        return np.concatenate([f.to_ndarray() for f in container.decode(stream)], axis=1)


def test_a_segment_is_mp3_of_the_asked_part_of_the_track(tmp_path):
    path = str(tmp_path / "song.wav")
    wave = write_wav(path, 20.0)
    track = TrackSource("song", path, 20.0, playable=True)
    samples = decode_mp3(encode_segment(track, 6.0, 4.0))
    assert samples.shape[1] / SEGMENT_SAMPLE_RATE_HZ == pytest.approx(4.0, abs=0.03)
    # Its loudness second by second follows the source's between 6 and 10 s (the tone
    # gets louder with time; FFmpeg spreads mono over two channels at -3 dB).
    rate = SEGMENT_SAMPLE_RATE_HZ
    got = np.array([np.abs(samples[0, k * rate : (k + 1) * rate]).max() for k in range(4)])
    source = np.array([np.abs(wave[(6 + k) * 16000 : (7 + k) * 16000]).max() for k in range(4)])
    np.testing.assert_allclose(got / source, np.sqrt(0.5), rtol=0.05)

    # Past the end the segment is cut at the track's end.
    start, duration = check_segment(18.0, 10.0, 20.0)
    assert (start, duration) == (18.0, 2.0)
    tail = decode_mp3(encode_segment(track, start, duration))
    assert tail.shape[1] / SEGMENT_SAMPLE_RATE_HZ == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize(
    "start, duration, message",
    [
        (-1.0, 5.0, "start must be"),
        (float("nan"), 5.0, "start must be"),
        (25.0, 5.0, "past the track's end"),
        (0.0, MAX_SEGMENT_S + 1, "duration must be in"),
        (0.0, 0.0, "duration must be in"),
    ],
)
def test_start_and_duration_are_bounded(start, duration, message):
    with pytest.raises(QueryError, match=message) as error:
        check_segment(start, duration, 20.0)
    assert error.value.status == 422


def test_unplayable_and_unreachable_sources_are_404_saying_why(tmp_path):
    with pytest.raises(QueryError, match="recorded no playable audio") as error:
        encode_segment(TrackSource("a", str(tmp_path / "a.wav"), 10.0, playable=False), 0, 5)
    assert error.value.status == 404
    missing = str(tmp_path / "elsewhere" / "b.wav")
    with pytest.raises(QueryError, match="cannot be read here") as error:
        encode_segment(TrackSource("b", missing, 10.0, playable=True), 0, 5)
    assert error.value.status == 404
    assert "elsewhere" not in error.value.detail  # no location in an answer
    not_audio = tmp_path / "c.wav"
    not_audio.write_bytes(b"not audio at all" * 100)
    with pytest.raises(QueryError, match="cannot be read here"):
        encode_segment(TrackSource("c", str(not_audio), 10.0, playable=True), 0, 5)
