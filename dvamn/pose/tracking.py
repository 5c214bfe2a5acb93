"""Keep one person, the main dancer, over time; fill the frames where nobody was found.

Tracking rule (``track_main_dancer``), per frame at 10 fps:

1. Candidates are the detected people whose mean keypoint score reaches
   ``min_person_score``.
2. Acquire: with no one tracked yet (or after losing the dancer for more than
   ``max_lost_frames`` frames), take the most salient candidate: box area x confidence
   (the box score, or the mean keypoint score when the detector gave none). A solo
   dancer is normally the largest, most confident person in frame.
3. Follow: otherwise compare each candidate with the last kept pose: box IoU, and the
   mean joint distance divided by the diagonal of the last box. A candidate passes the
   gate when IoU >= ``iou_gate`` or distance <= ``distance_gate`` (the distance gate
   widens by 10% for every frame the dancer has been lost, as they may have moved, up to
   1.5 times);
   the passing candidate with the highest IoU - distance is kept. A bigger person
   elsewhere in frame does not steal the track.
4. No candidate passes: the frame is missing (``present`` False).

Gap filling (``fill_gaps``): gaps of at most ``max_gap_frames`` missing frames between two
kept poses are linearly interpolated; longer gaps, and gaps at the start or end, hold the
nearest kept pose in time (no fake motion, no jump to zeros). Scores of missing frames
stay 0, so per-frame confidence shows where the pose was invented.
"""

import logging
from typing import Sequence, Tuple

import numpy as np

from dvamn.constants import MAX_GAP_FRAMES, NUM_JOINTS
from dvamn.pose.estimators import FramePoses

log = logging.getLogger(__name__)

GATE_WIDENING_PER_LOST_FRAME = 0.1
MAX_GATE_WIDENING = 1.5


class NoPersonError(ValueError):
    """Nobody was found in any frame of a video."""


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box [4] with boxes [N, 4] -> [N]."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = max(0.0, float(box[2] - box[0])) * max(0.0, float(box[3] - box[1]))
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(
        boxes[:, 3] - boxes[:, 1], 0, None
    )
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def _boxes_of(people: FramePoses) -> np.ndarray:
    """The detector's boxes, or the keypoints' extent where a box is degenerate."""
    boxes = people.boxes.astype(np.float64).copy()
    from_keypoints = np.concatenate(
        [people.keypoints.min(axis=1), people.keypoints.max(axis=1)], axis=1
    )
    bad = (
        ~np.isfinite(boxes).all(axis=1)
        | (boxes[:, 2] <= boxes[:, 0])
        | (boxes[:, 3] <= boxes[:, 1])
    )
    boxes[bad] = from_keypoints[bad]
    return boxes


def _confidence(people: FramePoses) -> np.ndarray:
    """Person confidence [N]: the box score, else the mean keypoint score."""
    mean_scores = people.scores.mean(axis=1)
    box_scores = people.box_scores.astype(np.float64)
    return np.where(np.isfinite(box_scores), box_scores, mean_scores)


def track_main_dancer(
    per_frame: Sequence[FramePoses],
    width: int,
    height: int,
    min_person_score: float = 0.05,
    iou_gate: float = 0.1,
    distance_gate: float = 0.5,
    max_lost_frames: int = 10,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The main dancer's pose in each frame (see the module docstring for the rule).

    ``width``/``height`` are the frame size in pixels (boxes are clipped to it).
    Returns keypoints float32 [T, 17, 2] pixels, scores float32 [T, 17] and present
    bool [T]; frames where the dancer is missing have zeros.
    """
    num_frames = len(per_frame)
    keypoints = np.zeros((num_frames, NUM_JOINTS, 2), np.float32)
    scores = np.zeros((num_frames, NUM_JOINTS), np.float32)
    present = np.zeros(num_frames, bool)
    frame_box = np.array([0, 0, width, height], np.float64)

    last_keypoints = last_box = None
    lost = 0
    for t, people in enumerate(per_frame):
        if len(people) == 0:
            lost += 1
            continue
        boxes = _boxes_of(people)
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], frame_box[0], frame_box[2])
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], frame_box[1], frame_box[3])
        candidates = np.flatnonzero(people.scores.mean(axis=1) >= min_person_score)
        if len(candidates) == 0:
            lost += 1
            continue

        if last_box is None or lost > max_lost_frames:
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            salience = area * np.clip(_confidence(people), 1e-3, None)
            chosen = int(candidates[np.argmax(salience[candidates])])
            if last_box is not None:
                log.debug("frame %d: dancer lost for %d frames, re-acquired", t, lost)
        else:
            iou = box_iou(last_box, boxes[candidates])
            diagonal = max(float(np.hypot(*(last_box[2:] - last_box[:2]))), 1.0)
            distance = (
                np.linalg.norm(people.keypoints[candidates] - last_keypoints, axis=2).mean(axis=1)
                / diagonal
            )
            widen = min(1.0 + GATE_WIDENING_PER_LOST_FRAME * lost, MAX_GATE_WIDENING)
            gate = (iou >= iou_gate) | (distance <= distance_gate * widen)
            if not gate.any():
                lost += 1
                continue
            match = np.where(gate, iou - distance, -np.inf)
            chosen = int(candidates[np.argmax(match)])

        keypoints[t] = people.keypoints[chosen]
        scores[t] = people.scores[chosen]
        present[t] = True
        last_keypoints = people.keypoints[chosen].astype(np.float64)
        last_box = boxes[chosen]
        lost = 0
    return keypoints, scores, present


def present_from_scores(scores: np.ndarray, min_score: float = 0.0) -> np.ndarray:
    """bool [T]: frames where some joint scores above ``min_score`` (keypoint files mark
    a frame without the dancer by all-zero scores)."""
    return np.asarray(scores).reshape(len(scores), -1).max(axis=1) > min_score


def fill_gaps(
    keypoints: np.ndarray,
    scores: np.ndarray,
    present: np.ndarray,
    max_gap_frames: int = MAX_GAP_FRAMES,
) -> Tuple[np.ndarray, np.ndarray, float]:
    """Fill the frames without the dancer (see the module docstring for the rule).

    keypoints float32 [T, 17, 2], scores float32 [T, 17], present bool [T] ->
    (keypoints filled, scores with 0 where missing, missing_fraction = missing frames / T
    before filling). Raises ``NoPersonError`` when no frame has the dancer.
    """
    present = np.asarray(present, bool)
    num_frames = len(present)
    if num_frames == 0 or not present.any():
        raise NoPersonError(f"nobody was found in any of the {num_frames} pose frames")
    filled = np.asarray(keypoints, np.float32).copy()
    out_scores = np.asarray(scores, np.float32).copy()
    out_scores[~present] = 0.0
    missing_fraction = float(1.0 - present.mean())

    kept = np.flatnonzero(present)
    for t in np.flatnonzero(~present):
        after_index = np.searchsorted(kept, t)
        before = kept[after_index - 1] if after_index > 0 else None
        after = kept[after_index] if after_index < len(kept) else None
        if before is not None and after is not None and after - before - 1 <= max_gap_frames:
            weight = (t - before) / (after - before)
            filled[t] = (1.0 - weight) * filled[before] + weight * filled[after]
        elif before is None:
            filled[t] = filled[after]
        elif after is None:
            filled[t] = filled[before]
        else:  # long gap: the nearer kept pose
            filled[t] = filled[before] if t - before <= after - t else filled[after]
    return filled, out_scores, missing_fraction
