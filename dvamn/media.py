"""Decode videos and music with PyAV: pose-rate frames and 16 kHz mono audio in one pass.

Shared by the extraction pipeline, the music catalog and the service. A ``MediaReader``
opens a URI (local path, ``s3://`` or any fsspec URL), a binary file object or bytes,
checks the file on open (empty, not media, no video, no audio, resolution) and then reads
the container ONCE: video frames are sampled at ``pose_fps`` by presentation timestamps
while the audio is resampled and accumulated in the same demux loop.

Sampling rule (the timing convention of ``dvamn.constants``): sample ``i`` is taken at
``t_i = i / pose_fps`` seconds and shows the last decoded frame whose presentation time is
``<= t_i``, so variable-frame-rate video is handled like any other; there are
``num_pose_frames(duration_s)`` samples. Only one decoded frame is held back as look-ahead
and only emitted frames are converted to arrays, so memory stays bounded by one batch.

Nothing a header says is trusted alone; every limit is checked on what is decoded:

- frame size: FFmpeg's decoder is told the largest frame it may allocate (the header's
  size, plus alignment), and every decoded frame must have the header's size and at most
  ``max_frame_pixels``, checked before it becomes an array;
- frame rate: a nominal rate over ``max_fps`` is refused on open, decoded frames may not
  arrive faster than ``max_fps`` either, and at most ``max_decoded_frames`` are decoded;
- duration: a header over ``max_duration_s`` is refused on open, and decoded audio stops
  at the header's duration plus ``DURATION_SLACK_S`` (counted in decoded samples);
- time: past ``deadline`` (a ``time.monotonic()`` instant) decoding stops;
- streams: only the streams that are used are demuxed (no audio without ``require_audio``).

Errors describe a file, never quote it: a message holds the file's name and what is
wrong, never bytes of its content (nor FFmpeg's log lines, which can echo them).

Example::

    with MediaReader("s3://bucket/dance.mp4") as reader:
        for frames, times_s in reader.frame_batches(32):   # [B,H,W,3] uint8 BGR, [B] s
            ...
        waveform = reader.audio()                          # [N] float32 at 16 kHz
"""

import errno
import io
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import BinaryIO, Iterator, List, Optional, Tuple, Union

import av
import av.error
import numpy as np

from dvamn import storage
from dvamn.constants import (
    MAX_DURATION_S,
    MAX_FRAME_PIXELS,
    MAX_NOMINAL_FPS,
    POSE_FPS,
    SAMPLE_RATE_HZ,
    num_pose_frames,
)

log = logging.getLogger(__name__)

# A file whose decodable media ends before this fraction of its header duration is
# reported as truncated (FFmpeg often decodes happily up to the damage and stops).
MIN_DECODED_FRACTION = 0.9
# Frames within this much of a sample time count as shown at it (float pts rounding).
_PTS_EPSILON_S = 1e-6
# Decoded media may run this far past the header's duration (encoder padding, rounding of
# the last frame); audio beyond it is not decoded.
DURATION_SLACK_S = 1.0
# FFmpeg checks its frame-size limit on the stride-aligned width (up to 64 pixels more)
# and on the coded height (H.264 codes 1080 lines as 1088); its limit gets this margin.
_DECODER_ALIGN_PIXELS = 64

MediaSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]

# First bytes of container formats FFmpeg reads; a file that starts like one of these but
# does not open is damaged rather than "not media".
_MEDIA_SIGNATURES = (
    (4, b"ftyp"),
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"free"),
    (4, b"wide"),
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM
    (0, b"RIFF"),  # AVI / WAV
    (0, b"OggS"),
    (0, b"fLaC"),
    (0, b"ID3"),  # MP3 with tags
    (0, b"FLV"),
    (0, b"\x00\x00\x01\xba"),  # MPEG program stream
)


class MediaError(ValueError):
    """A media file that cannot be used; the message names the file and what is wrong."""


class MediaLimitError(MediaError):
    """The file is over a limit: frame size, duration, frame rate or decoded frames."""


class InconsistentMediaError(MediaError):
    """What decodes contradicts the header (a frame of another size than the header's,
    or a frame size that changes mid-stream)."""


class MediaDeadlineError(MediaError):
    """Decoding did not finish before the reader's deadline."""


@dataclass(frozen=True)
class MediaInfo:
    """What the container header says about a file.

    Attributes:
        duration_s: header duration in seconds (the longest stream).
        width, height: video frame size in pixels (0 when there is no video).
        has_video, has_audio: whether a video / audio stream exists.
        video_codec, audio_codec: FFmpeg codec names ("" when the stream is absent).
        nominal_fps: the video stream's average frame rate, None when unknown or no video.
        title: the ``title`` tag of the container or its first audio stream ("" if none).
    """

    duration_s: float
    width: int
    height: int
    has_video: bool
    has_audio: bool
    video_codec: str
    audio_codec: str
    nominal_fps: Optional[float]
    title: str = ""


def describe_source(source: MediaSource) -> str:
    """A name for ``source`` to put in messages: the URI/path, a file object's name, or a
    placeholder for in-memory bytes."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes in memory>"
    name = getattr(source, "name", None) or getattr(source, "path", None)
    return str(name) if name else "<file object>"


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character may be cut at the end of the sniffed bytes.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable >= 0.95 * len(text)


def _looks_like_media(head: bytes) -> bool:
    if any(head[offset : offset + len(sig)] == sig for offset, sig in _MEDIA_SIGNATURES):
        return True
    # MPEG audio frame sync (11 set bits) or MPEG transport stream sync byte.
    return (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0) or (
        len(head) >= 189 and head[0] == 0x47 and head[188] == 0x47
    )


def _stream_duration_s(stream: av.stream.Stream) -> Optional[float]:
    if stream.duration is None or stream.time_base is None:
        return None
    return float(stream.duration * stream.time_base)


class MediaReader:
    """One media file: header info on open, then one decoding pass for frames and audio.

    Args:
        source: a URI (local path, ``s3://``, any fsspec URL), a seekable binary file
            object, or the file's bytes.
        name: how to call the file in messages (default: derived from ``source``).
        pose_fps: frame sampling rate of ``frame_batches`` (frames per second).
        sample_rate_hz: rate of the mono float32 waveform returned by ``audio``.
        max_frame_pixels: larger frames (width x height) are refused: in the header on
            open, and every decoded frame before it is converted.
        require_audio: the audio track is needed: refuse files without one, and decode it.
            False: the audio is neither demuxed nor decoded (``audio()`` is unavailable).
        require_video: refuse files without a video stream.
        min_duration_s: refuse files shorter than this (0 accepts any length).
        max_duration_s: refuse files whose header is longer (None: no limit); decoded
            audio stops at the header's duration plus ``DURATION_SLACK_S`` in any case.
        max_fps: refuse a higher nominal frame rate on open, and video whose decoded
            frames arrive faster (more than ``max_fps`` per second of video time).
        max_decoded_frames: most video frames one reader decodes (None: the header's
            duration plus ``DURATION_SLACK_S``, times ``max_fps``).
        deadline: a ``time.monotonic()`` instant past which decoding stops with
            ``MediaDeadlineError`` (None: no deadline); covers the caller's work between
            batches too, since it is checked at every packet.
        decode_threads: video decoder threads (0: FFmpeg picks one per core); set it to
            a worker's CPU share when many readers run side by side.

    Raises:
        MediaError: on open for a missing, empty, non-media or unusable file, and while
            decoding for a truncated or corrupt one. Its subclasses ``MediaLimitError``
            (over a limit), ``InconsistentMediaError`` (frames unlike the header) and
            ``MediaDeadlineError`` (out of time) say which limit was hit.
    """

    def __init__(
        self,
        source: MediaSource,
        *,
        name: Optional[str] = None,
        pose_fps: float = POSE_FPS,
        sample_rate_hz: int = SAMPLE_RATE_HZ,
        max_frame_pixels: int = MAX_FRAME_PIXELS,
        require_audio: bool = True,
        require_video: bool = True,
        min_duration_s: float = 0.0,
        max_duration_s: Optional[float] = MAX_DURATION_S,
        max_fps: float = MAX_NOMINAL_FPS,
        max_decoded_frames: Optional[int] = None,
        deadline: Optional[float] = None,
        decode_threads: int = 0,
    ) -> None:
        if pose_fps <= 0 or sample_rate_hz <= 0:
            raise ValueError(
                f"pose_fps ({pose_fps}) and sample_rate_hz ({sample_rate_hz}) must be > 0"
            )
        if (
            max_frame_pixels < 1
            or max_fps <= 0
            or (max_duration_s is not None and max_duration_s <= 0)
        ):
            raise ValueError(
                f"max_frame_pixels ({max_frame_pixels}), max_fps ({max_fps}) and "
                f"max_duration_s ({max_duration_s}) must be > 0"
            )
        self.name = name or describe_source(source)
        self.pose_fps = float(pose_fps)
        self.sample_rate_hz = int(sample_rate_hz)
        self.decode_threads = int(decode_threads)
        self.max_frame_pixels = int(max_frame_pixels)
        self.max_fps = float(max_fps)
        self.deadline = deadline
        self._decode_audio = require_audio
        self._audio_full = False  # the audio reached its cap: no more audio is decoded
        self._audio_cap_samples = 0
        self._max_decoded_frames = 0
        self._owned_file: Optional[BinaryIO] = None
        self._container: Optional[av.container.InputContainer] = None
        self._audio_chunks: List[np.ndarray] = []
        self._audio_samples = 0
        self._audio_start_s: Optional[float] = None
        self._audio_trim = 0  # samples still to drop where the audio starts before t=0
        self._resampler: Optional[av.AudioResampler] = None
        self._pass: Optional[Iterator[Tuple[av.VideoFrame, float]]] = None
        self._pass_done = False
        self._decode_video = True
        self._frames_started = False
        self._last_video_end_s = 0.0
        try:
            self._open(source)
            self.info = self._probe()
            self._validate(require_audio, require_video, min_duration_s, max_duration_s)
            self._audio_cap_samples = math.ceil(
                (self.info.duration_s + DURATION_SLACK_S) * self.sample_rate_hz
            )
            frame_cap = math.ceil((self.info.duration_s + DURATION_SLACK_S) * self.max_fps)
            self._max_decoded_frames = (
                frame_cap if max_decoded_frames is None else min(frame_cap, max_decoded_frames)
            )
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- open & check

    def _open(self, source: MediaSource) -> None:
        """Open the container, turning FFmpeg's terse failures into messages."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            fileobj: Union[str, BinaryIO] = io.BytesIO(bytes(source))
            self._owned_file = fileobj
        elif isinstance(source, (str, os.PathLike)):
            uri = os.fspath(source)
            if storage.is_remote(uri):
                try:
                    fileobj = storage.open_uri(uri)
                except FileNotFoundError as e:
                    raise MediaError(f"{self.name} does not exist") from e
                self._owned_file = fileobj
            else:
                path = uri[len("file://") :] if uri.startswith("file://") else uri
                if not os.path.isfile(path):
                    raise MediaError(f"{self.name} does not exist or is not a file")
                # FFmpeg reads local paths itself, faster than through a Python file.
                fileobj = path
        else:
            fileobj = source
        head = self._peek(fileobj, 512)
        if not head:
            raise MediaError(f"{self.name} is empty (0 bytes): re-copy or re-download it")
        if _looks_like_text(head) and not _looks_like_media(head):
            # Refused before FFmpeg sees it: text formats FFmpeg probes (HLS and DASH
            # playlists, SDP, ...) name other files and URLs that it would open.
            raise MediaError(f"{self.name} is not a media file: it is text")
        try:
            # The limit also binds the frames FFmpeg decodes to probe the streams, so
            # that a header that lies cannot make the probe allocate a huge frame.
            self._container = av.open(
                fileobj,
                mode="r",
                metadata_errors="ignore",
                options={"max_pixels": str(2 * self.max_frame_pixels)},
            )
        except (av.error.FFmpegError, OSError) as e:
            raise self._open_error(head, e) from e

    @staticmethod
    def _peek(fileobj: Union[str, BinaryIO], size: int) -> bytes:
        if isinstance(fileobj, str):
            with open(fileobj, "rb") as f:
                return f.read(size)
        start = fileobj.tell()
        head = fileobj.read(size)
        fileobj.seek(start)
        return head

    def _open_error(self, head: bytes, error: Exception) -> MediaError:
        # Describe, never quote: the file may be anything (a symlinked secret), and
        # FFmpeg's messages can carry its log lines, which may echo bytes of it.
        reason = _describe_error(error)
        if _looks_like_text(head):
            return MediaError(f"{self.name} is not a media file: it is text")
        if _looks_like_media(head):
            return MediaError(
                f"{self.name} is truncated or corrupt: it starts like a media file but "
                f"FFmpeg cannot read its header ({reason}); re-copy or re-encode it"
            )
        return MediaError(f"{self.name} is not a media file FFmpeg can read ({reason})")

    def _probe(self) -> MediaInfo:
        container = self._container
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        if video is None and audio is None:
            raise MediaError(f"{self.name} is not a media file: it has no video or audio stream")
        durations = [_stream_duration_s(s) for s in (video, audio) if s is not None]
        if container.duration is not None:
            durations.append(container.duration / av.time_base)
        durations = [d for d in durations if d is not None and d > 0]
        if not durations:
            raise MediaError(
                f"{self.name} has no duration in its header (a raw stream?): remux it into "
                "an mp4 or mkv container, e.g. `ffmpeg -i IN -c copy OUT.mp4`"
            )
        rate = None
        if video is not None:
            rate = video.average_rate or video.guessed_rate
        return MediaInfo(
            duration_s=max(durations),
            width=int(video.codec_context.width) if video is not None else 0,
            height=int(video.codec_context.height) if video is not None else 0,
            has_video=video is not None,
            has_audio=audio is not None,
            video_codec=video.codec_context.name if video is not None else "",
            audio_codec=audio.codec_context.name if audio is not None else "",
            nominal_fps=float(rate) if rate else None,
            title=_title_tag(container),
        )

    def _validate(
        self,
        require_audio: bool,
        require_video: bool,
        min_duration_s: float,
        max_duration_s: Optional[float],
    ) -> None:
        info = self.info
        if require_video and not info.has_video:
            raise MediaError(f"{self.name} has no video stream (audio only?)")
        # A video stream that is not required (cover art of a music file) is not decoded.
        checks_video = info.has_video and require_video
        if checks_video and info.width * info.height > self.max_frame_pixels:
            raise MediaLimitError(self._pixels_message(info.width, info.height, "has a"))
        if checks_video and min(info.width, info.height) <= 0:
            # FFmpeg's probe is held to the limit: a first frame over it leaves no size.
            raise MediaError(
                f"{self.name} has no readable frame size: its frames are over the limit of "
                f"{self.max_frame_pixels:,} pixels, or it is corrupt"
            )
        # The declared average rate only: FFmpeg's guessed rate can be a time base (1000
        # for many WebM files), and cover art in a music file is never decoded.
        average = self._container.streams.video[0].average_rate if info.has_video else None
        if checks_video and average and float(average) > self.max_fps:
            raise MediaLimitError(
                f"{self.name} has a frame rate of {float(average):.6g} fps, over the limit "
                f"of {self.max_fps:g} fps: re-encode it at a lower rate (e.g. `ffmpeg -i IN "
                "-r 30 OUT.mp4`)"
            )
        if max_duration_s is not None and info.duration_s > max_duration_s:
            raise MediaLimitError(
                f"{self.name} is {info.duration_s:.1f} s long, over the limit of "
                f"{max_duration_s:g} s: cut it (e.g. `ffmpeg -i IN -t {max_duration_s:g} "
                "-c copy OUT.mp4`) or raise the limit"
            )
        if require_audio and not info.has_audio:
            raise MediaError(
                f"{self.name} has no audio track: DVAMN learns the music from a video's own "
                "soundtrack; use videos with sound"
            )
        if info.duration_s < min_duration_s:
            raise MediaError(
                f"{self.name} is {info.duration_s:.1f} s long, shorter than the "
                f"{min_duration_s:.0f} s needed"
            )

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        if self._owned_file is not None:
            self._owned_file.close()
            self._owned_file = None

    def __enter__(self) -> "MediaReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def num_frames(self) -> int:
        """Frames ``frame_batches`` yields: ``num_pose_frames(info.duration_s)``."""
        return num_pose_frames(self.info.duration_s)

    # ----------------------------------------------------------------- decoding

    def _decode_pass(self, decode_video: bool) -> Iterator[Tuple[av.VideoFrame, float]]:
        """The single demux loop: yields (video frame, time in s) and accumulates audio.

        Video packets are skipped undecoded once ``self._decode_video`` is False, so that
        ``audio()`` can finish a pass whose frames nobody wants any more; audio packets
        once the audio is full. The pass ends when neither is wanted any more.
        """
        container = self._container
        if container is None:
            raise RuntimeError(f"{self.name} is closed")
        info = self.info
        video = container.streams.video[0] if info.has_video and decode_video else None
        audio = container.streams.audio[0] if info.has_audio and self._decode_audio else None
        streams = [s for s in (video, audio) if s is not None]
        for stream in container.streams:
            if stream not in streams:  # lets the demuxer skip their data, not only drop it
                stream.discard = av.stream.Discard.all
        if video is not None:
            video.thread_type = "AUTO"  # frame + slice threads; decoding dominates
            video.thread_count = self.decode_threads
            # The decoder refuses (before allocating) a frame much larger than the header.
            decoder_pixels = (info.width + _DECODER_ALIGN_PIXELS) * (
                info.height + _DECODER_ALIGN_PIXELS
            )
            video.codec_context.options = {
                **(video.codec_context.options or {}),
                "max_pixels": str(min(decoder_pixels, 2 * self.max_frame_pixels)),
            }
        self._decode_video = self._decode_video and video is not None
        origin_s = (container.start_time or 0) / av.time_base
        frame_period_s = 1.0 / info.nominal_fps if info.nominal_fps else 0.0
        frames_seen = 0
        position_s = 0.0
        try:
            for packet in container.demux(streams):
                self._check_deadline(position_s)
                kind = packet.stream.type
                if kind == "video" and not self._decode_video:
                    if self._audio_full or audio is None:
                        break  # nothing left to decode
                    continue
                if kind == "audio" and self._audio_full:
                    if not self._decode_video:
                        break
                    continue
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as e:
                    if kind == "video" and e.errno == errno.EINVAL:
                        raise InconsistentMediaError(
                            f"{self.name}: video frame {frames_seen} does not decode within "
                            f"the header's {info.width}x{info.height} frame size (it is "
                            "larger than the header says, or corrupt)"
                        ) from e
                    raise
                for frame in frames:
                    time_s = frame.time
                    if isinstance(frame, av.AudioFrame):
                        self._add_audio(frame, None if time_s is None else time_s - origin_s)
                        position_s = self._audio_samples / self.sample_rate_hz
                        continue
                    self._check_frame(frame, frames_seen)
                    if time_s is None:  # no pts (rare containers): count frames instead
                        time_s = frames_seen * frame_period_s
                    else:
                        time_s -= origin_s
                    frames_seen += 1
                    self._check_frame_count(frames_seen, time_s)
                    position_s = time_s
                    self._last_video_end_s = time_s + frame_period_s
                    yield frame, time_s
            self._flush_audio()
        except av.error.FFmpegError as e:
            raise MediaError(
                f"{self.name} is truncated or corrupt: decoding failed near {position_s:.1f} s "
                f"of {info.duration_s:.1f} s ({_describe_error(e)})"
            ) from e
        self._pass_done = True
        self._check_coverage(video is not None and self._decode_video, frames_seen)

    def _pixels_message(self, width: int, height: int, what: str) -> str:
        return (
            f"{self.name} {what} {width}x{height} frame, over the limit of "
            f"{self.max_frame_pixels:,} pixels: downscale it (e.g. `ffmpeg -i IN -vf "
            "scale=-2:720 OUT.mp4`) or raise the limit"
        )

    def _check_frame(self, frame: av.VideoFrame, index: int) -> None:
        """Every decoded frame has the header's size (within the limit), checked before
        anything converts it, so that no batch holds frames of another size."""
        width, height = frame.width, frame.height
        if width * height > self.max_frame_pixels:
            raise MediaLimitError(
                self._pixels_message(width, height, f"decodes, at frame {index}, a")
            )
        expected = (self.info.width, self.info.height)
        if (width, height) == expected:
            return
        if index == 0:
            raise InconsistentMediaError(
                f"{self.name}: video frame 0 is {width}x{height}, but the header says "
                f"{expected[0]}x{expected[1]}"
            )
        raise InconsistentMediaError(
            f"{self.name}: the frame size changes mid-stream at video frame {index}, from "
            f"{expected[0]}x{expected[1]} to {width}x{height}; re-encode it at one size "
            "(e.g. `ffmpeg -i IN -vf scale=1280:720 OUT.mp4`)"
        )

    def _check_frame_count(self, frames_seen: int, time_s: float) -> None:
        if frames_seen > self._max_decoded_frames:
            raise MediaLimitError(
                f"{self.name}: over {self._max_decoded_frames:,} video frames decode from "
                f"{self.info.duration_s:.1f} s of video (the limit is {self.max_fps:g} fps)"
            )
        if frames_seen > self.max_fps * (max(time_s, 0.0) + DURATION_SLACK_S):
            raise MediaLimitError(
                f"{self.name}: {frames_seen:,} video frames decode from the first "
                f"{max(time_s, 0.0):.1f} s, faster than the limit of {self.max_fps:g} fps"
            )

    def _check_deadline(self, position_s: float) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise MediaDeadlineError(
                f"{self.name}: out of time after decoding {position_s:.1f} s of "
                f"{self.info.duration_s:.1f} s"
            )

    def _add_audio(self, frame: av.AudioFrame, time_s: Optional[float]) -> None:
        if self._audio_start_s is None:
            self._audio_start_s = time_s or 0.0
            # Audio that starts after the container origin is padded so that sample k
            # stays at k / sample_rate_hz seconds of video time; an early start is cut.
            offset = round(self._audio_start_s * self.sample_rate_hz)
            if offset > 0:  # never more padding than the cap (a start time can be anything)
                self._append_audio(np.zeros(min(offset, self._audio_cap_samples), np.float32))
            elif offset < 0:
                self._audio_trim = -offset
        if self._resampler is None:
            # Keep the channels and average them ourselves: FFmpeg's own downmix to mono
            # adds the channels at -3 dB, which makes stereo music 1.4x louder than mono.
            self._resampler = av.AudioResampler(
                format="fltp", layout=frame.layout, rate=self.sample_rate_hz
            )
        for out in self._resampler.resample(frame):
            self._append_audio(out.to_ndarray().mean(axis=0))

    def _append_audio(self, samples: np.ndarray) -> None:
        if self._audio_trim:
            cut = min(self._audio_trim, len(samples))
            samples = samples[cut:]
            self._audio_trim -= cut
        room = self._audio_cap_samples - self._audio_samples
        if len(samples) >= room:
            # Audio longer than its header says is cut where the header ends (+ slack).
            samples = samples[: max(room, 0)]
            self._audio_full = True
        if len(samples):
            self._audio_chunks.append(samples.astype(np.float32, copy=False))
            self._audio_samples += len(samples)

    def _flush_audio(self) -> None:
        if self._resampler is not None:
            for out in self._resampler.resample(None):
                self._append_audio(out.to_ndarray().mean(axis=0))

    def _check_coverage(self, checked_video: bool, frames_seen: int) -> None:
        """Raise MediaError when the decoded media stops well before the header says."""
        container = self._container
        parts = []
        if checked_video:
            expected = _stream_duration_s(container.streams.video[0]) or self.info.duration_s
            parts.append(("video", self._last_video_end_s if frames_seen else 0.0, expected))
        if self.info.has_audio and self._decode_audio:
            expected = _stream_duration_s(container.streams.audio[0]) or self.info.duration_s
            parts.append(("audio", self._audio_samples / self.sample_rate_hz, expected))
        for kind, decoded_s, expected_s in parts:
            if decoded_s < MIN_DECODED_FRACTION * expected_s:
                raise MediaError(
                    f"{self.name} is truncated or corrupt: decoded {decoded_s:.1f} s of "
                    f"{expected_s:.1f} s of {kind}"
                )

    def frame_batches(self, batch_size: int = 32) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Video frames sampled at ``pose_fps``, in batches, audio accumulated alongside.

        Yields:
            frames: uint8 [B, H, W, 3] in BGR order (what rtmlib and OpenCV expect),
                B <= batch_size; only the last batch may be shorter.
            times_s: float64 [B] sample times ``i / pose_fps`` in seconds.

        In total ``self.num_frames`` frames. Can be iterated once per reader.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not self.info.has_video:
            raise MediaError(f"{self.name} has no video stream to take frames from")
        if self._pass is not None:
            raise RuntimeError(f"frames of {self.name} were already read; open a new reader")
        self._frames_started = True
        self._pass = self._decode_pass(decode_video=True)
        total = self.num_frames
        batch: List[np.ndarray] = []
        times: List[float] = []
        held: Optional[av.VideoFrame] = None
        held_array: Optional[np.ndarray] = None
        index = 0

        def emit(frame_array: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
            """Takes the next sample; returns the batch to yield once it is full."""
            nonlocal index, batch, times
            batch.append(frame_array)
            times.append(index / self.pose_fps)
            index += 1
            if len(batch) < batch_size:
                return None
            full = np.stack(batch), np.asarray(times, np.float64)
            batch, times = [], []
            return full

        for frame, time_s in self._pass:
            # Every sample time before this frame's pts shows the held frame (or, before
            # the first frame, this one: nothing earlier exists to show).
            while index < total and index / self.pose_fps < time_s - _PTS_EPSILON_S:
                if held is None:
                    held, held_array = frame, None
                if held_array is None:
                    held_array = held.to_ndarray(format="bgr24")
                full = emit(held_array)
                if full is not None:
                    yield full
            held, held_array = frame, None
            if index >= total:
                # All samples taken: finish the pass for the audio without decoding video.
                self._decode_video = False
        if held is None:
            raise MediaError(f"{self.name} is truncated or corrupt: no video frame decodes")
        while index < total:
            if held_array is None:
                held_array = held.to_ndarray(format="bgr24")
            full = emit(held_array)
            if full is not None:
                yield full
        if batch:
            yield np.stack(batch), np.asarray(times, np.float64)

    def audio(self) -> np.ndarray:
        """The soundtrack as float32 [N] mono at ``sample_rate_hz``, N ~ duration * rate.

        After ``frame_batches`` ran, returns what that pass accumulated (finishing the pass
        without decoding video if it stopped early); otherwise decodes the audio alone.
        """
        if not self.info.has_audio:
            raise MediaError(f"{self.name} has no audio track")
        if not self._decode_audio:
            raise RuntimeError(f"{self.name} was opened with require_audio=False: no audio")
        if not self._pass_done:
            self._decode_video = False
            if self._pass is None:
                self._pass = self._decode_pass(decode_video=False)
            for _ in self._pass:
                pass
        if not self._audio_chunks:
            raise MediaError(f"{self.name} is truncated or corrupt: no audio decodes")
        if len(self._audio_chunks) > 1:
            self._audio_chunks = [np.concatenate(self._audio_chunks)]
        return self._audio_chunks[0]


def read_info(source: MediaSource, *, name: Optional[str] = None) -> MediaInfo:
    """Header information of a media file without decoding anything (no duration limit)."""
    with MediaReader(
        source, name=name, require_audio=False, require_video=False, max_duration_s=None
    ) as reader:
        return reader.info


def read_audio(
    source: MediaSource,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    *,
    name: Optional[str] = None,
    max_duration_s: Optional[float] = MAX_DURATION_S,
) -> Tuple[np.ndarray, MediaInfo]:
    """Decode the audio of a music file (wav, mp3, flac, ogg, m4a, ...) or of a video.

    Returns:
        waveform: float32 [N] mono at ``sample_rate_hz``.
        info: the file's MediaInfo.
    """
    with MediaReader(
        source,
        name=name,
        sample_rate_hz=sample_rate_hz,
        require_audio=True,
        require_video=False,
        max_duration_s=max_duration_s,
    ) as reader:
        return reader.audio(), reader.info


def _describe_error(error: Exception) -> str:
    """FFmpeg's reason for an error, without its log line or anything else from the file."""
    if isinstance(error, av.error.FFmpegError):
        return error.strerror or type(error).__name__
    return type(error).__name__


def _title_tag(container: av.container.InputContainer) -> str:
    """The ``title`` tag of the container or of its first audio stream ("" if none)."""
    for metadata in [container.metadata] + [s.metadata for s in container.streams.audio[:1]]:
        for key, value in (metadata or {}).items():
            if key.lower() == "title" and value and value.strip():
                return value.strip()
    return ""
