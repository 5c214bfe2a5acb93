"""Keeping the main dancer among several people, and filling frames without anyone."""

import numpy as np
import pytest

from dvamn.pose import FramePoses, NoPersonError, fill_gaps, present_from_scores, track_main_dancer
from tests.support.standin_pose import TEMPLATE

WIDTH, HEIGHT = 640, 360


def _person(x1: float, y1: float, x2: float, y2: float, score: float = 0.9):
    """A standing skeleton filling the box, with its box and scores."""
    unit = np.asarray(TEMPLATE, np.float32)
    keypoints = np.array([x1, y1]) + unit * np.array([x2 - x1, y2 - y1])
    return keypoints, np.full(17, score, np.float32), np.array([x1, y1, x2, y2]), score


def _frame(*people) -> FramePoses:
    if not people:
        return FramePoses.empty()
    keypoints, scores, boxes, box_scores = zip(*people)
    return FramePoses.of(keypoints, scores, boxes, box_scores)


def test_keeps_the_dancer_when_a_bigger_person_walks_in():
    """The dancer starts largest; a bystander walks in from the side and grows larger than
    the dancer, listed first in the detections; the track stays on the dancer."""
    frames = []
    for t in range(30):
        sway = 15 * np.sin(t / 3)
        dancer = _person(250 + sway, 60, 370 + sway, 330)
        people = [dancer]
        if t >= 5:
            grow = min(t - 5, 20) * 6
            people.insert(0, _person(20, 40 - grow / 3, 150 + grow, 350, score=0.95))
        frames.append(_frame(*people))
    keypoints, scores, present = track_main_dancer(frames, WIDTH, HEIGHT)
    assert keypoints.shape == (30, 17, 2) and scores.shape == (30, 17) and present.all()
    hip_x = keypoints[:, 11:13, 0].mean(axis=1)
    expected = 310 + 15 * np.sin(np.arange(30) / 3)
    np.testing.assert_allclose(hip_x, expected, atol=1.0)


def test_starts_with_the_most_salient_person():
    small = _person(20, 100, 80, 220)
    large = _person(300, 40, 420, 340)
    keypoints, _, present = track_main_dancer([_frame(small, large)], WIDTH, HEIGHT)
    assert present.all() and keypoints[0, 0, 0] > 300


def test_missing_frames_and_reacquisition_after_a_long_loss():
    dancer = _person(250, 60, 370, 330)
    elsewhere = _person(20, 60, 140, 330)
    frames = [_frame(dancer)] * 3 + [_frame()] * 2 + [_frame(elsewhere)] * 14
    keypoints, scores, present = track_main_dancer(frames, WIDTH, HEIGHT, max_lost_frames=10)
    # The far-away person fails the gate while the dancer may come back, then is taken.
    np.testing.assert_array_equal(present[:5], [True, True, True, False, False])
    # Frames 3..13 are 11 lost frames (> max_lost_frames): frame 14 re-acquires.
    assert not present[5:14].any() and present[14:].all()
    assert keypoints[14, 0, 0] < 150
    assert (scores[~present] == 0).all() and (keypoints[~present] == 0).all()


def test_low_confidence_people_are_ignored():
    ghost = _person(250, 60, 370, 330, score=0.01)
    _, _, present = track_main_dancer([_frame(ghost)], WIDTH, HEIGHT)
    assert not present.any()


def test_fill_gaps_interpolates_short_gaps_and_holds_long_ones():
    keypoints = np.zeros((12, 17, 2), np.float32)
    keypoints[:, :, 0] = np.arange(12)[:, None] * 10.0
    scores = np.ones((12, 17), np.float32)
    present = np.ones(12, bool)
    present[[0, 3, 4]] = False  # leading gap of 1, interior gap of 2
    present[6:11] = False  # interior gap of 5 > max_gap_frames=3
    filled, filled_scores, missing = fill_gaps(keypoints, scores, present, max_gap_frames=3)
    assert missing == pytest.approx(8 / 12)
    x = filled[:, 0, 0]
    assert x[0] == 10.0  # leading gap holds the first kept pose
    np.testing.assert_allclose(x[3:5], [30.0, 40.0])  # interpolated between 20 and 50
    np.testing.assert_allclose(x[6:11], [50, 50, 50, 110, 110])  # the nearer kept pose
    assert (filled_scores[~present] == 0).all() and (filled_scores[present] == 1).all()


def test_fill_gaps_without_anyone_raises_no_person():
    with pytest.raises(NoPersonError, match="nobody"):
        fill_gaps(np.zeros((4, 17, 2)), np.zeros((4, 17)), np.zeros(4, bool))


def test_present_from_scores_marks_all_zero_frames_missing():
    scores = np.zeros((3, 17), np.float32)
    scores[1, 4] = 0.2
    np.testing.assert_array_equal(present_from_scores(scores), [False, True, False])
