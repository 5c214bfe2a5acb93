"""Every fixed rate, size and length of the system, named once with its unit.

Timing convention (shared by pose, audio, windows and the scorer):
pose frame ``i`` shows the video at ``i / POSE_FPS`` seconds; audio frame ``k`` covers the
interval ``[k * AUDIO_HOP_S, (k + 1) * AUDIO_HOP_S)`` and its 0.96 s VGGish example is
centred on the middle of that interval (the released DVAMN code's 0.5 s shift), so audio
frame ``k`` belongs with pose frames ``2k`` and ``2k + 1``.
"""

import math

POSE_FPS = 10.0
NUM_JOINTS = 17  # COCO-17 order
POSE_FEATURES = 4 * NUM_JOINTS  # normalised (x, y) + motion (dx, dy) per joint = 68

SAMPLE_RATE_HZ = 16_000
AUDIO_HOP_S = 0.2  # one embedding every 0.2 s (5 Hz), as the paper
AUDIO_FPS = 1.0 / AUDIO_HOP_S
AUDIO_EXAMPLE_S = 0.96  # VGGish's example: 96 log-mel frames of 10 ms
EMBEDDING_DIM = 128
POSE_FRAMES_PER_AUDIO_FRAME = round(POSE_FPS * AUDIO_HOP_S)  # 2

WINDOW_S = 12.0  # the paper's clip length
WINDOW_POSE_FRAMES = round(WINDOW_S * POSE_FPS)  # 120
WINDOW_AUDIO_FRAMES = round(WINDOW_S * AUDIO_FPS)  # 60
MIN_DURATION_S = WINDOW_S  # shorter videos cannot give one training window
# Longest video, music track or query accepted (10 min): decoding time and memory grow
# with it, and a dance or a song rarely runs longer.
MAX_DURATION_S = 600.0
# Highest nominal video frame rate accepted (phones film slow motion at 240 fps); every
# frame is decoded, so decoding cost grows with the rate, not with the 10 fps we keep.
MAX_NOMINAL_FPS = 240.0
# 4096 x 4096 admits 4K UHD and DCI 4K, landscape or portrait; larger frames cost seconds
# each to decode and gigabytes per batch, and no dance video needs them for a 17-joint pose.
MAX_FRAME_PIXELS = 4096 * 4096
# Longest run of frames without the dancer that is interpolated (0.5 s at 10 fps); longer
# gaps are not invented. Extraction and the service fill gaps alike.
MAX_GAP_FRAMES = 5
POSE_FRAME_BATCH = 16  # frames per pose-model call


def num_pose_frames(duration_s: float) -> int:
    """Pose frames sampled from ``duration_s`` seconds of video at POSE_FPS."""
    return max(0, math.floor(duration_s * POSE_FPS + 1e-6))


def num_audio_frames(duration_s: float) -> int:
    """Audio embedding frames for ``duration_s`` seconds of audio at AUDIO_HOP_S."""
    return max(0, math.floor(duration_s / AUDIO_HOP_S + 1e-6))
