"""Draw the stick figure and write mp4 files (H.264 + AAC) with PyAV."""

from fractions import Fraction
from typing import Iterable, Optional, Tuple, Union

import av
import cv2
import numpy as np

from dvamn.synth.dancer import JOINT_COLORS_BGR, LIMB_COLOR_BGR, SKELETON_EDGES

# Sub-pixel drawing: OpenCV takes coordinates as integers scaled by 2**_SHIFT.
_SHIFT = 4
_FACE_JOINTS = 5  # nose, eyes, ears are drawn smaller
# Millisecond timestamps for variable-frame-rate video.
_VFR_TIME_BASE = Fraction(1, 1000)


def make_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A muted, dark, slightly noisy background [H, W, 3] uint8 BGR with a soft gradient,
    so that the saturated joint colours stand out."""
    base = rng.uniform(20, 90, size=3)
    tint = rng.uniform(-25, 25, size=3)
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    noise = rng.normal(0.0, 5.0, size=(height, width, 1))
    image = base[None, None, :] + tint[None, None, :] * ramp + noise
    return np.clip(image, 0, 255).astype(np.uint8)


def render_frame(
    background: np.ndarray, keypoints_px: np.ndarray, visible: bool, scale_px: float
) -> np.ndarray:
    """A frame [H, W, 3] uint8 BGR: the figure with joints ``keypoints_px`` [17, 2] (pixels)
    drawn as limbs (grey lines) and joints (filled circles in ``JOINT_COLORS_BGR``)."""
    frame = background.copy()
    if not visible:
        return frame
    points = np.round(keypoints_px * (1 << _SHIFT)).astype(np.int64)
    thickness = max(1, int(round(0.025 * scale_px)))
    radius = max(2.0, 0.045 * scale_px)
    for a, b in SKELETON_EDGES:
        cv2.line(
            frame,
            tuple(points[a]),
            tuple(points[b]),
            LIMB_COLOR_BGR,
            thickness,
            cv2.LINE_AA,
            _SHIFT,
        )
    for joint, color in enumerate(JOINT_COLORS_BGR):
        r = radius * (0.6 if joint < _FACE_JOINTS else 1.0)
        cv2.circle(
            frame,
            tuple(points[joint]),
            int(round(r * (1 << _SHIFT))),
            color,
            -1,
            cv2.LINE_AA,
            _SHIFT,
        )
    return frame


def encode_mp4(
    path: str,
    frames: Iterable[Tuple[Union[np.ndarray, av.VideoFrame], float]],
    width: int,
    height: int,
    fps: float,
    *,
    audio: Optional[np.ndarray] = None,
    sample_rate_hz: int = 22_050,
    variable_frame_rate: bool = False,
    faststart: bool = False,
    preset: str = "veryfast",
) -> None:
    """Write an mp4: H.264 (libx264, yuv420p) video and, if given, AAC mono audio.

    Args:
        frames: (image [H, W, 3] uint8 BGR or a ready av.VideoFrame, presentation time
            in s), in time order. With
            ``variable_frame_rate`` the times are kept to the millisecond; otherwise frame
            k is stamped k / fps whatever its time says.
        audio: float32 [N] mono in -1..1 at ``sample_rate_hz``, or None for no audio track.
        faststart: put the index (moov) before the media data, as streaming files do; a
            truncated faststart file still opens and fails while decoding.
    """
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(path, mode="w", format="mp4", options=options) as container:
        video = container.add_stream(
            "libx264",
            rate=Fraction(fps).limit_denominator(1001),
            width=width,
            height=height,
            options={"preset": preset, "crf": "23"},
        )
        # One encoder thread: files are written in parallel processes, and x264 is then
        # byte-deterministic.
        video.codec_context.thread_count = 1
        if variable_frame_rate:
            video.codec_context.time_base = _VFR_TIME_BASE
        audio_stream = None
        if audio is not None:
            audio_stream = container.add_stream("aac", rate=int(sample_rate_hz), layout="mono")
        for index, (image, time_s) in enumerate(frames):
            if isinstance(image, av.VideoFrame):
                frame = image
            else:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
            if variable_frame_rate:
                frame.pts = int(round(time_s * 1000))
                frame.time_base = _VFR_TIME_BASE
            else:
                frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio_stream is not None:
            samples = np.ascontiguousarray(audio, np.float32).reshape(1, -1)
            audio_frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
            audio_frame.sample_rate = int(sample_rate_hz)
            audio_frame.pts = 0
            container.mux(audio_stream.encode(audio_frame))
            container.mux(audio_stream.encode(None))


def blank_frame(width: int, height: int) -> av.VideoFrame:
    """A black yuv420p frame made without colour conversion (cheap at huge sizes)."""
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane, fill in zip(frame.planes, (16, 128, 128)):
        plane.update(bytes([fill]) * plane.buffer_size)
    return frame
