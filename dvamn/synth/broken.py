"""Bad input files of every kind extraction must survive, each with the error expected.

Kinds (cycled in this order by ``synthesize(..., broken=M)``):

- ``zero_byte``: an empty file.
- ``not_media``: a text file named .mp4.
- ``truncated``: a real mp4 (index first) cut to 40% of its bytes.
- ``corrupt``: a real mp4 (index first) with random bytes over its middle fifth.
- ``no_audio``: a video without an audio track.
- ``short``: a dance of 8 s, under the 12 s a training window needs.
- ``nobody``: a full-length video with music and nobody in any frame (npz scores all 0).
- ``huge``: 6000 x 6000 frames (two of them), over MediaReader's pixel limit.

Files are named ``broken_<kind>_NN.mp4``, with the keypoint file beside them where the
video itself is plausible (so the keypoint path meets the same failure).
"""

import os
from dataclasses import replace
from typing import Dict

import numpy as np

from dvamn.synth.clip import VideoSpec, make_video

BROKEN_KINDS = (
    "zero_byte",
    "not_media",
    "truncated",
    "corrupt",
    "no_audio",
    "short",
    "nobody",
    "huge",
)
SHORT_SECONDS = 8.0
HUGE_SIZE = (6000, 6000)  # 36 Mpx, over dvamn.constants.MAX_FRAME_PIXELS
TRUNCATE_FRACTION = 0.4
# Garbage over [0.4, 0.6) of the file: past the index, in the middle of the media data.
CORRUPT_SPAN = (0.4, 0.6)

# What a user should read for each kind (the substance of MediaReader's message or of the
# extraction stage's check).
EXPECTED_ERRORS = {
    "zero_byte": "empty (0 bytes)",
    "not_media": "not a media file",
    "truncated": "truncated or corrupt",
    "corrupt": "truncated or corrupt",
    "no_audio": "no audio track",
    "short": "shorter than the 12 s needed",
    "nobody": "nobody in any frame",
    "huge": "over the limit",
}


def make_broken(kind: str, name: str, spec: VideoSpec, out_dir: str) -> Dict:
    """Write broken file ``name`` (a stem) of ``kind`` into local ``out_dir`` using the
    dance ``spec`` where a real video is needed; return its manifest entry."""
    path = os.path.join(out_dir, f"{name}.mp4")
    keypoints = f"{name}.npz"
    spec = replace(spec, video_id=name, write_music=False)
    if kind == "zero_byte":
        open(path, "wb").close()
        keypoints = None
    elif kind == "not_media":
        with open(path, "w") as f:
            f.write("This is not a video: a text file someone named .mp4.\n")
        keypoints = None
    elif kind in ("truncated", "corrupt"):
        make_video(replace(spec, faststart=True), out_dir)
        with open(path, "rb") as f:
            data = bytearray(f.read())
        if kind == "truncated":
            data = data[: int(len(data) * TRUNCATE_FRACTION)]
        else:
            rng = np.random.default_rng(spec.seed)
            a, b = (int(len(data) * x) for x in CORRUPT_SPAN)
            data[a:b] = rng.integers(0, 256, size=b - a, dtype=np.uint8).tobytes()
        with open(path, "wb") as f:
            f.write(bytes(data))
    elif kind == "no_audio":
        make_video(replace(spec, include_audio=False), out_dir)
    elif kind == "short":
        make_video(replace(spec, seconds=SHORT_SECONDS, track_seconds=SHORT_SECONDS), out_dir)
    elif kind == "nobody":
        make_video(replace(spec, draw_dancer=False), out_dir)
    elif kind == "huge":
        make_video(replace(spec, huge_size=HUGE_SIZE), out_dir)
    else:
        raise ValueError(f"unknown broken kind {kind!r}; choose one of {', '.join(BROKEN_KINDS)}")
    return {
        "id": name,
        "video": f"{name}.mp4",
        "keypoints": keypoints,
        "kind": kind,
        "expected_error": EXPECTED_ERRORS[kind],
    }
