"""A matcher without training: the dance's motion accents against each track's onsets.

The baseline a trained model must beat (issue 13). Letters: T query frames, N tracks, L
frames of a track, O = L - T + 1 start offsets. Two channels of timing, the first
preferred (``dvamn.training.evaluate.rhythm_baseline`` chooses):

- ``audio_onset`` (``dvamn.audio.onset``, stored by extraction for every embedding kind),
  at the pose rate (10 Hz): ``pose_accents`` (the rectified rise of summed joint speed per
  pose frame) against ``smooth_series(onset)``, both smoothed by the same 3-frame Hann
  window.
- For features made before that channel: the ``logmel`` onset-rate dimensions at the
  audio rate (5 Hz, ``AUDIO_HOP_S``; pose frames 2k and 2k + 1 belong with audio frame k),
  as follows. Their 0.96 s averages cancel a pulse of period 0.48 s and blur faster ones:
  on an unseen choreography family this channel is at chance where ``audio_onset`` ranks
  the true track first among 100 for 8% of the queries (docs/audio.md).

- Motion accents of a pose sequence (T_p, 68): the summed speed of the 17 joints (the
  motion half of the features, ``dvamn.pose.features``), its rectified rise from frame to
  frame (a move starting or speeding up), averaged over the 0.96 s around each audio
  frame's centre, as the ``logmel`` onset rates average their flux over VGGish's 0.96 s
  example: one value per audio frame.
- Onsets of a track (L, 128) of ``logmel`` embeddings: the sum of its 16 onset-rate
  dimensions [64:80] (how often and how hard notes and hits start, per band group; see
  ``dvamn.audio.logmel``). VGGish embeddings have no such dimensions (``onset_dims``
  says so): old VGGish features get no rhythm matcher rather than a guessed one.
- Score of a track at offset o: the Pearson correlation of the query's T accents with the
  track's onsets o .. o + T - 1; a track's score is its best offset's. Distances are
  1 - correlation (lower is better, as in ``dvamn.scoring``); a constant series
  correlates 0. Tracks shorter than the query are compared on the frames they have, at
  offset 0. Ties: the earliest offset.

Cost: one (N·O, T) @ (T,) product per query, on windows prepared once per bank.
"""

from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from dvamn.constants import NUM_JOINTS, POSE_FPS, POSE_FRAMES_PER_AUDIO_FRAME

# The logmel layout (dvamn/audio/logmel.py): 64 band levels, then 16 onset rates.
LOGMEL_ONSET_DIMS = slice(64, 80)
ACCENT_WINDOW_S = 0.96  # the span the logmel onset rates average over
_MOTION = slice(2 * NUM_JOINTS, 4 * NUM_JOINTS)  # (dx, dy) per joint in the 68 features


def onset_dims(audio_embedding_kind: str) -> Optional[slice]:
    """The onset-rate dimensions of an embedding kind, or None where it has none."""
    return LOGMEL_ONSET_DIMS if audio_embedding_kind == "logmel" else None


def _speed_rise(pose: np.ndarray) -> np.ndarray:
    """(T_p, 68) pose features -> (T_p,) rectified rise of the summed speed of the joints."""
    pose = np.asarray(pose, np.float64)
    if pose.ndim != 2 or pose.shape[1] != 4 * NUM_JOINTS:
        raise ValueError(f"pose must be (T, {4 * NUM_JOINTS}), got {list(pose.shape)}")
    motion = pose[:, _MOTION].reshape(len(pose), NUM_JOINTS, 2)
    speed = np.linalg.norm(motion, axis=2).sum(axis=1)  # (T_p,)
    rise = np.zeros_like(speed)
    rise[1:] = np.maximum(speed[1:] - speed[:-1], 0.0)
    return rise


def motion_accents(pose: np.ndarray) -> np.ndarray:
    """(T_p, 68) pose features -> (T_p // 2,) accents at the audio rate (module docstring)."""
    rise = _speed_rise(pose)
    num_audio = len(rise) // POSE_FRAMES_PER_AUDIO_FRAME
    # Audio frame k is centred on pose time 2k + 1; average over +-0.48 s of pose frames.
    half = ACCENT_WINDOW_S / 2 * POSE_FPS
    centres = np.arange(num_audio) * POSE_FRAMES_PER_AUDIO_FRAME + 1
    lo = np.clip(np.ceil(centres - half).astype(int), 0, len(rise))
    hi = np.clip(np.floor(centres + half).astype(int) + 1, 0, len(rise))
    cumulative = np.concatenate([[0.0], np.cumsum(rise)])
    return (cumulative[hi] - cumulative[lo]) / np.maximum(hi - lo, 1)


def smooth_series(x: np.ndarray) -> np.ndarray:
    """A 3-frame Hann smoothing (weights 1/4, 1/2, 1/4; the ends see zeros): a move and a
    hit one frame apart still overlap."""
    x = np.asarray(x, np.float64)
    return np.convolve(x, [0.25, 0.5, 0.25], mode="same") if len(x) else x


def pose_accents(pose: np.ndarray) -> np.ndarray:
    """(T_p, 68) pose features -> (T_p,) smoothed motion accents at the pose rate, to match
    against ``smooth_series`` of an ``audio_onset`` channel (module docstring)."""
    return smooth_series(_speed_rise(pose))


def track_onsets(audio: np.ndarray, dims: slice = LOGMEL_ONSET_DIMS) -> np.ndarray:
    """(L, 128) embeddings -> (L,) summed onset rates."""
    audio = np.asarray(audio, np.float64)
    if audio.ndim != 2 or audio.shape[1] < dims.stop:
        raise ValueError(f"audio must be (L, 128) embeddings, got {list(audio.shape)}")
    return audio[:, dims].sum(axis=1)


def _unit(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Centred and scaled to unit norm along ``axis``; constant series become 0."""
    centred = x - x.mean(axis=axis, keepdims=True)
    norm = np.linalg.norm(centred, axis=axis, keepdims=True)
    return np.divide(centred, norm, out=np.zeros_like(centred), where=norm > 1e-12)


class RhythmBank:
    """Tracks' onset series prepared for correlating queries of any length."""

    def __init__(self, onsets: Sequence[np.ndarray]):
        self.onsets = [np.asarray(o, np.float64) for o in onsets]
        self._windows: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}

    @property
    def num_tracks(self) -> int:
        return len(self.onsets)

    def _prepared(self, t: int) -> Tuple[np.ndarray, np.ndarray]:
        """(N, O_max, T) unit windows (zeros past a track's end) and (N, O_max) validity."""
        if t not in self._windows:
            o_max = max([len(o) - t + 1 for o in self.onsets] + [1])
            windows = np.zeros((self.num_tracks, o_max, t))
            valid = np.zeros((self.num_tracks, o_max), bool)
            for i, onsets in enumerate(self.onsets):
                if len(onsets) >= t:
                    view = np.lib.stride_tricks.sliding_window_view(onsets, t)  # (O, T)
                    windows[i, : len(view)] = _unit(view)
                    valid[i, : len(view)] = True
            self._windows[t] = (windows, valid)
        return self._windows[t]

    def score(self, accents: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Distances (N,) = 1 - best correlation, and best offsets (N,), for one query's
        accents (T,)."""
        accents = np.asarray(accents, np.float64)
        t = len(accents)
        if t < 2:
            raise ValueError(f"a rhythm query needs at least 2 frames, got {t}")
        windows, valid = self._prepared(t)
        corr = windows @ _unit(accents)  # (N, O_max)
        corr = np.where(valid, corr, -np.inf)
        offsets = corr.argmax(axis=1)  # the earliest best offset
        best = corr[np.arange(self.num_tracks), offsets]
        for i, onsets in enumerate(self.onsets):
            if 2 <= len(onsets) < t:  # short track: the frames it has, at offset 0
                best[i], offsets[i] = float(_unit(onsets) @ _unit(accents[: len(onsets)])), 0
        distances = np.where(np.isfinite(best), 1.0 - best, np.inf)
        return distances, offsets
