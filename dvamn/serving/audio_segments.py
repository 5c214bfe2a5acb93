"""Segments of catalog tracks as MP3, for ``GET /tracks/{track_id}/audio`` (the web page
plays a suggestion from its best offset against the dancer's video).

The source is the URI the catalog job recorded for the track, read through fsspec; a
client only names a catalog track id, never a path or URI. Start and duration are
bounded (``check_segment``), decoding stops at the segment's end, and the encoded size
is checked on what was encoded. MP3 at a constant bitrate: every current browser plays
it, and the segment's size follows from its duration.
"""

import io
import logging
import math
from dataclasses import dataclass
from typing import Optional

import av
import numpy as np

from dvamn import storage
from dvamn.serving.queries import QueryError

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_S = 30.0
MAX_SEGMENT_S = 60.0
SEGMENT_SAMPLE_RATE_HZ = 44100
SEGMENT_BITRATE = 128_000
SEGMENT_MEDIA_TYPE = "audio/mpeg"
# 60 s at 128 kbit/s is 960 kB; the rest is headers and the encoder's last frame.
MAX_SEGMENT_BYTES = int(MAX_SEGMENT_S * SEGMENT_BITRATE / 8) + 64 * 1024
_FRAME_SAMPLES = 1152  # an MP3 frame


@dataclass(frozen=True)
class TrackSource:
    """What the catalog recorded about one track's audio (``MatchModel.track_source``)."""

    track_id: str
    uri: str
    duration_s: float
    playable: bool


def check_segment(start_s: float, duration_s: Optional[float], track_duration_s: float) -> tuple:
    """(start, duration) of a segment within a track, or a 422 naming the bad value."""
    if not math.isfinite(start_s) or start_s < 0:
        raise QueryError(422, f"start must be a number of seconds >= 0, not {start_s:g}")
    if start_s >= track_duration_s:
        raise QueryError(
            422,
            f"start {start_s:g} s is past the track's end ({track_duration_s:.1f} s long)",
        )
    if duration_s is None:
        duration_s = DEFAULT_SEGMENT_S
    if not math.isfinite(duration_s) or not 0 < duration_s <= MAX_SEGMENT_S:
        raise QueryError(
            422, f"duration must be in (0, {MAX_SEGMENT_S:g}] seconds, not {duration_s:g}"
        )
    return float(start_s), float(min(duration_s, track_duration_s - start_s))


def unavailable(track: TrackSource, why: str) -> QueryError:
    """A 404 that says why the track's audio cannot be played (never where it lives)."""
    return QueryError(
        404,
        f"the audio of track {track.track_id!r} is not available from this service: {why}",
    )


def encode_segment(track: TrackSource, start_s: float, duration_s: float) -> bytes:
    """MP3 bytes of ``track`` from ``start_s`` for ``duration_s`` seconds (stereo, 44.1 kHz).

    Raises ``QueryError`` 404 when the catalog recorded no playable audio for the track or
    its source cannot be read by this service.
    """
    if not track.playable or not track.uri:
        raise unavailable(track, "the catalog recorded no playable audio for it")
    try:
        with storage.open_uri(track.uri, "rb") as source:
            samples = _decode(source, start_s, duration_s)
    except (OSError, ValueError, av.error.FFmpegError) as exc:
        # The operator reads where and why in the log; the client gets the reason only.
        log.warning("audio of track %s from %s: %s", track.track_id, track.uri, exc)
        raise unavailable(
            track,
            "its source, recorded by the catalog job, cannot be read here (a catalog "
            "built on another machine, or storage this service does not reach)",
        ) from None
    if samples.shape[1] == 0:
        raise unavailable(track, "no audio decodes at that start")
    data = _encode(samples)
    if len(data) > MAX_SEGMENT_BYTES:  # a backstop: the bitrate bounds it
        raise QueryError(500, f"the encoded segment is {len(data)} bytes, over the limit")
    return data


def _decode(source, start_s: float, duration_s: float) -> np.ndarray:
    """float32 (2, N) samples at SEGMENT_SAMPLE_RATE_HZ from start_s, at most duration_s."""
    wanted = int(round(duration_s * SEGMENT_SAMPLE_RATE_HZ))
    skip = None  # samples before start_s in what the seek gave
    chunks, kept = [], 0
    with av.open(source, mode="r", metadata_errors="ignore") as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=SEGMENT_SAMPLE_RATE_HZ)
        if start_s > 0 and stream.time_base:
            container.seek(int(start_s / stream.time_base), stream=stream)  # a frame before
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                array = out.to_ndarray()
                if skip is None:
                    first_s = float(out.pts * out.time_base) if out.pts is not None else 0.0
                    skip = max(0, int(round((start_s - first_s) * SEGMENT_SAMPLE_RATE_HZ)))
                if skip:
                    cut = min(skip, array.shape[1])
                    array, skip = array[:, cut:], skip - cut
                array = array[:, : wanted - kept]
                chunks.append(array)
                kept += array.shape[1]
            if kept >= wanted:
                break
    if not chunks:
        return np.zeros((2, 0), np.float32)
    return np.concatenate(chunks, axis=1).astype(np.float32)


def _encode(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=SEGMENT_SAMPLE_RATE_HZ)
        stream.layout = "stereo"
        stream.bit_rate = SEGMENT_BITRATE
        for begin in range(0, samples.shape[1], _FRAME_SAMPLES):
            chunk = np.ascontiguousarray(samples[:, begin : begin + _FRAME_SAMPLES])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate = SEGMENT_SAMPLE_RATE_HZ
            frame.pts = begin
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()
