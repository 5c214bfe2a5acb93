"""Keypoint files: our .npz format, AIST++ pickles, finding them, resampling to 10 fps."""

import io
import os
import pickle
import zipfile

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dvamn.pose import (
    KeypointFileError,
    KeypointTrack,
    aist_view_from_name,
    find_keypoint_file,
    load_aist_keypoints,
    load_keypoint_file,
    load_keypoints_for_video,
    resample_track,
    save_keypoint_file,
)
from dvamn.pose.keypoint_files import MAX_KEYPOINT_FRAMES


def _track(num_frames: int = 30, fps: float = 30.0) -> KeypointTrack:
    keypoints = np.zeros((num_frames, 17, 2), np.float32)
    keypoints[:, :, 0] = np.arange(num_frames)[:, None]  # x = source frame index
    return KeypointTrack(keypoints, np.full((num_frames, 17), 0.9, np.float32), fps, 640, 360)


def test_save_and_load_round_trip(tmp_path):
    path = str(tmp_path / "clip.npz")
    save_keypoint_file(path, _track())
    track = load_keypoint_file(path)
    assert track.keypoints.shape == (30, 17, 2) and track.keypoints.dtype == np.float32
    assert track.fps == 30.0 and (track.width, track.height) == (640, 360)
    np.testing.assert_array_equal(track.keypoints, _track().keypoints)


def test_width_and_height_are_optional(tmp_path):
    path = tmp_path / "clip.npz"
    np.savez(
        path,
        keypoints=np.zeros((3, 17, 2), np.float32),
        scores=np.ones((3, 17), np.float32),
        fps=25,
    )
    track = load_keypoint_file(str(path))
    assert track.width is None and track.height is None and track.fps == 25.0


@pytest.mark.parametrize(
    "fields,match",
    [
        (dict(scores=np.ones((3, 17)), fps=30), "'keypoints' is missing"),
        (
            dict(keypoints=np.zeros((3, 18, 2)), scores=np.ones((3, 17)), fps=30),
            r"shape \[3, 18, 2\]",
        ),
        (
            dict(keypoints=np.zeros((3, 17, 2), np.int32), scores=np.ones((3, 17)), fps=30),
            "dtype int32",
        ),
        (dict(keypoints=np.full((3, 17, 2), np.nan), scores=np.ones((3, 17)), fps=30), "NaN"),
        (dict(keypoints=np.zeros((3, 17, 2)), scores=np.ones((2, 17)), fps=30), "3 frames but"),
        (dict(keypoints=np.zeros((3, 17, 2)), scores=np.ones((3, 17))), "'fps' is missing"),
        (dict(keypoints=np.zeros((3, 17, 2)), scores=np.ones((3, 17)), fps=-1), "positive"),
    ],
)
def test_bad_keypoint_files_name_the_file_and_field(tmp_path, fields, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **fields)
    with pytest.raises(KeypointFileError, match=match) as info:
        load_keypoint_file(str(path))
    assert "bad.npz" in str(info.value)


def test_a_text_file_is_not_a_keypoint_file(tmp_path):
    path = tmp_path / "text.npz"
    path.write_text("hello")
    with pytest.raises(KeypointFileError, match="not a readable .npz"):
        load_keypoint_file(str(path))


def test_resample_picks_the_frame_on_screen_at_each_tenth_of_a_second():
    keypoints, scores = resample_track(_track(30, fps=30.0))  # 1 s at 30 fps -> 10 frames
    np.testing.assert_array_equal(keypoints[:, 0, 0], np.arange(0, 30, 3))
    keypoints, _ = resample_track(_track(25, fps=25.0))  # 25 fps: frame 2.5 -> the one before
    np.testing.assert_array_equal(keypoints[:, 0, 0], [0, 2, 5, 7, 10, 12, 15, 17, 20, 22])


def test_resample_marks_frames_past_the_end_missing():
    keypoints, scores = resample_track(_track(30, fps=30.0), num_frames=14)
    assert (scores[10:] == 0).all() and (scores[:10] > 0).all()


def _aist_pickle(path, num_frames: int = 120) -> np.ndarray:
    """A fake AIST++ keypoints2d pickle with the documented layout."""
    points = np.zeros((9, num_frames, 17, 3), np.float32)
    points[..., 0] = np.arange(num_frames)[None, :, None]  # x = frame index
    points[..., 1] = np.arange(9)[:, None, None] * 100.0  # y = view * 100
    points[..., 2] = 0.8
    points[2, 7] = np.nan  # view 2 lost the dancer at frame 7
    det_scores = np.ones((9, num_frames), np.float32)
    det_scores[2, 13] = 0.0
    with open(path, "wb") as f:
        pickle.dump(
            {
                "keypoints2d": points,
                "det_scores": det_scores,
                "timestamps": np.arange(num_frames) * 16,
            },
            f,
            protocol=pickle.HIGHEST_PROTOCOL,
        )
    return points


def test_aist_keypoints_one_view_at_60_fps(tmp_path):
    path = tmp_path / "gBR_sBM_cAll_d04_mBR0_ch01.pkl"
    _aist_pickle(path)
    track = load_aist_keypoints(str(path), view=2)
    assert track.fps == 60.0 and (track.width, track.height) == (1920, 1080)
    assert (
        track.keypoints.shape == (120, 17, 2)
        and (track.keypoints[:, :, 1][track.scores > 0] == 200).all()
    )
    assert (track.scores[[7, 13]] == 0).all() and (track.keypoints[7] == 0).all()
    keypoints, _ = resample_track(track)  # 2 s -> 20 frames, every 6th
    np.testing.assert_array_equal(keypoints[:, 0, 0], np.arange(0, 120, 6))
    with pytest.raises(KeypointFileError, match="view 9 does not exist"):
        load_aist_keypoints(str(path), view=9)


def test_aist_pickle_refuses_foreign_objects(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"keypoints2d": KeypointTrack(None, None, 1.0)}, f)
    with pytest.raises(KeypointFileError, match="refused to unpickle"):
        load_aist_keypoints(str(path))


def test_find_keypoint_files_beside_the_video_in_a_dir_and_with_aist_names(tmp_path):
    videos, keypoints_dir = tmp_path / "videos", tmp_path / "kp"
    (keypoints_dir / "keypoints2d").mkdir(parents=True)
    videos.mkdir()
    save_keypoint_file(str(videos / "a.npz"), _track())
    save_keypoint_file(str(keypoints_dir / "b.npz"), _track())
    _aist_pickle(keypoints_dir / "keypoints2d" / "gBR_sBM_cAll_d04_mBR0_ch01.pkl")

    assert find_keypoint_file(str(videos / "a.mp4")) == str(videos / "a.npz")
    assert find_keypoint_file(str(videos / "b.mp4"), str(keypoints_dir)) == str(
        keypoints_dir / "b.npz"
    )
    aist_video = str(videos / "gBR_sBM_c03_d04_mBR0_ch01.mp4")
    assert find_keypoint_file(aist_video, str(keypoints_dir)).endswith(
        "keypoints2d/gBR_sBM_cAll_d04_mBR0_ch01.pkl"
    )
    assert aist_view_from_name(aist_video) == 2
    track = load_keypoints_for_video(aist_video, str(keypoints_dir))
    assert track.fps == 60.0 and track.keypoints[0, 0, 1] == 200.0  # view 2
    with pytest.raises(FileNotFoundError, match="--keypoints-dir"):
        find_keypoint_file(str(videos / "c.mp4"), str(keypoints_dir))


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_aist_pickles_of_every_protocol_numpy_writes_are_read(tmp_path, protocol):
    # AIST++ wrote its pickles with pickle.HIGHEST_PROTOCOL: 4 (Python 3.7) or 5 (3.8+);
    # protocol 5 pickles arrays through _frombuffer, 3 and 4 through _reconstruct.
    points = np.zeros((9, 30, 17, 3), np.float32)
    points[..., 0] = np.arange(30)[None, :, None]
    points[..., 2] = 0.5
    fortran = np.asfortranarray(np.ones((9, 30), np.float32))
    path = tmp_path / "seq.pkl"
    with open(path, "wb") as f:
        pickle.dump(
            {"keypoints2d": points, "det_scores": fortran, "timestamps": np.arange(30) * 2},
            f,
            protocol=protocol,
        )
    track = load_aist_keypoints(str(path), view=4)
    np.testing.assert_array_equal(track.keypoints[:, 0, 0], np.arange(30))
    assert (track.scores == 0.5).all() and track.num_frames == 30


def test_aist_pickle_with_a_big_endian_array_is_read(tmp_path):
    points = np.full((9, 4, 17, 3), 2.0, dtype=">f8")
    path = tmp_path / "seq.pkl"
    path.write_bytes(pickle.dumps({"keypoints2d": points}, protocol=4))
    track = load_aist_keypoints(str(path), view=0)
    assert track.keypoints.dtype == np.float32 and (track.keypoints == 2.0).all()


def test_keypoint_files_past_the_limits_are_refused(tmp_path):
    path = tmp_path / "slow.npz"
    np.savez(path, keypoints=np.zeros((10, 17, 2)), scores=np.ones((10, 17)), fps=1e-3)
    with pytest.raises(KeypointFileError, match="longer than the 600 s limit"):
        load_keypoint_file(str(path))
    np.savez(path, keypoints=np.zeros((10, 17, 2)), scores=np.ones((10, 17)), fps=1000)
    with pytest.raises(KeypointFileError, match="over the 240 fps limit"):
        load_keypoint_file(str(path))
    np.savez(path, keypoints=np.full((10, 17, 2), 1e300), scores=np.ones((10, 17)), fps=30)
    with pytest.raises(KeypointFileError, match="NaN or infinite"):
        load_keypoint_file(str(path))
    np.savez(path, keypoints=np.full((10, 17, 2), 1e9), scores=np.ones((10, 17)), fps=30)
    with pytest.raises(KeypointFileError, match="beyond"):
        load_keypoint_file(str(path))


def test_aist_timestamps_that_span_hours_are_refused(tmp_path):
    path = tmp_path / "gaps.pkl"
    stamps = np.arange(20)
    stamps[-1] = 10**9  # one frame id far after the others: days at 60 fps
    path.write_bytes(
        pickle.dumps({"keypoints2d": np.ones((9, 20, 17, 3), np.float32), "timestamps": stamps})
    )
    with pytest.raises(KeypointFileError, match="longer than the 600 s limit"):
        load_aist_keypoints(str(path))


def test_convert_aist_pickle_writes_one_npz_per_view_named_like_the_videos(tmp_path):
    from dvamn.pose import convert_aist_pickle

    pkl = tmp_path / "keypoints2d" / "gBR_sBM_cAll_d04_mBR0_ch01.pkl"
    pkl.parent.mkdir()
    points = _aist_pickle(pkl)
    out = tmp_path / "npz"
    written = convert_aist_pickle(str(pkl), str(out))
    assert [os.path.basename(p) for p in written] == [
        f"gBR_sBM_c{camera:02d}_d04_mBR0_ch01.npz" for camera in range(1, 10)
    ]
    for view in range(9):
        converted = load_keypoint_file(written[view])
        direct = load_aist_keypoints(str(pkl), view=view)
        assert converted.fps == 60.0 and (converted.width, converted.height) == (1920, 1080)
        np.testing.assert_array_equal(converted.keypoints, direct.keypoints)
        np.testing.assert_array_equal(converted.scores, direct.scores)
    assert (load_keypoint_file(written[2]).keypoints[:, :, 1][points[2, :, :, 2] > 0] >= 0).all()
    # extraction looks there by the video's own name
    video = str(tmp_path / "videos" / "gBR_sBM_c03_d04_mBR0_ch01.mp4")
    assert find_keypoint_file(video, str(out)) == str(out / "gBR_sBM_c03_d04_mBR0_ch01.npz")
    only = convert_aist_pickle(str(pkl), str(tmp_path / "one"), view=5)
    assert [os.path.basename(p) for p in only] == ["gBR_sBM_c06_d04_mBR0_ch01.npz"]


def test_convert_aist_pickle_puts_frames_at_their_timestamps(tmp_path):
    from dvamn.pose import convert_aist_pickle

    pkl = tmp_path / "gBR_sBM_cAll_d04_mBR0_ch01.pkl"
    points = np.ones((9, 4, 17, 3), np.float32)
    points[..., 0] = np.arange(4)[None, :, None] + 1.0
    stamps = np.array([0, 16, 32, 80])  # frames 3 and 4 missing in every view
    pkl.write_bytes(pickle.dumps({"keypoints2d": points, "timestamps": stamps}, protocol=5))
    (path,) = convert_aist_pickle(str(pkl), str(tmp_path / "out"), view=0)
    track = load_keypoint_file(path)
    assert track.num_frames == 6
    np.testing.assert_array_equal(track.keypoints[:, 0, 0], [1, 2, 3, 0, 0, 4])
    np.testing.assert_array_equal(track.scores[:, 0], [1, 1, 1, 0, 0, 1])


def test_dvamn_convert_aist_reports_each_file_and_fails_when_one_is_bad(tmp_path, capsys):
    from dvamn.cli import main

    source = tmp_path / "keypoints2d"
    source.mkdir()
    _aist_pickle(source / "gBR_sBM_cAll_d04_mBR0_ch01.pkl")
    _aist_pickle(source / "gJS_sFM_cAll_d01_mJS0_ch02.pkl", num_frames=30)
    (source / "gPO_sBM_cAll_d10_mPO1_ch03.pkl").write_bytes(
        b"\x80\x04cos\nsystem\n(S'touch x'\ntR."
    )
    out = tmp_path / "out"
    assert main(["convert-aist", str(source), "--out", str(out), "--view", "1"]) == 1
    captured = capsys.readouterr()
    assert "gPO_sBM_cAll_d10_mPO1_ch03.pkl: error: " in captured.err
    assert "os.system" in captured.err and captured.err.count("error:") == 1
    assert "[1/3]" in captured.out and "-> 1 .npz" in captured.out
    assert "converted 2 of 3 pickles into 2 .npz files" in captured.out
    assert sorted(os.listdir(out)) == [
        "gBR_sBM_c02_d04_mBR0_ch01.npz",
        "gJS_sFM_c02_d01_mJS0_ch02.npz",
    ]
    (source / "gPO_sBM_cAll_d10_mPO1_ch03.pkl").unlink()
    assert main(["convert-aist", str(source), "--out", str(out)]) == 0
    assert len(os.listdir(out)) == 18


# --- property-based: any generated file is a valid track or a KeypointFileError ---------

_DTYPES = st.sampled_from(
    [np.float16, np.float32, np.float64, np.int32, np.int64, np.uint8, np.bool_, np.complex64]
)


# Each example overwrites the same file in tmp_path, so sharing the fixture is safe.
_HEALTH = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]


def _valid_or_keypoint_file_error(load, path):
    try:
        track = load(str(path))
    except KeypointFileError:
        return None
    assert track.keypoints.dtype == np.float32 and track.scores.dtype == np.float32
    assert track.keypoints.ndim == 3 and track.keypoints.shape[1:] == (17, 2)
    assert track.scores.shape == track.keypoints.shape[:2]
    assert 1 <= track.num_frames <= MAX_KEYPOINT_FRAMES
    assert np.isfinite(track.keypoints).all() and np.isfinite(track.scores).all()
    assert 0 < track.fps <= 240 and track.duration_s <= 600
    return track


def _array(draw, shape_strategy):
    shape = draw(shape_strategy)
    dtype = draw(_DTYPES)
    values = (
        hnp.from_dtype(np.dtype(dtype), allow_nan=True, allow_infinity=True)
        if np.dtype(dtype).kind in "fc"
        else hnp.from_dtype(np.dtype(dtype))
    )
    return draw(hnp.arrays(dtype, shape, elements=values))


_FRAME_SHAPES = st.one_of(
    st.tuples(st.integers(0, 40), st.sampled_from([17, 16]), st.sampled_from([2, 3])),
    hnp.array_shapes(min_dims=0, max_dims=4, max_side=5),
)


@st.composite
def _npz_fields(draw):
    fields = {}
    if draw(st.booleans()) or draw(st.booleans()):
        fields["keypoints"] = _array(draw, _FRAME_SHAPES)
    if draw(st.booleans()) or draw(st.booleans()):
        fields["scores"] = _array(
            draw,
            st.one_of(
                st.tuples(st.integers(0, 40), st.sampled_from([17, 5])),
                hnp.array_shapes(min_dims=0, max_dims=3, max_side=5),
            ),
        )
    for name in ("fps", "width", "height"):
        if draw(st.booleans()):
            fields[name] = _array(draw, hnp.array_shapes(min_dims=0, max_dims=2, max_side=2))
    return fields


@settings(max_examples=150, deadline=None, suppress_health_check=_HEALTH)
@given(fields=_npz_fields(), compressed=st.booleans())
def test_property_any_npz_is_a_valid_track_or_a_keypoint_file_error(tmp_path, fields, compressed):
    path = tmp_path / "generated.npz"
    (np.savez_compressed if compressed else np.savez)(path, **fields)
    track = _valid_or_keypoint_file_error(load_keypoint_file, path)
    if track is not None:
        assert track.num_frames == len(fields["keypoints"])


@settings(max_examples=120, deadline=None, suppress_health_check=_HEALTH)
@given(
    frames=st.integers(1, 200),
    compressed=st.booleans(),
    cut=st.integers(min_value=0, max_value=10**6),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=4),
)
def test_property_a_damaged_npz_is_a_valid_track_or_a_keypoint_file_error(
    tmp_path, frames, compressed, cut, flips
):
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(
        buffer,
        keypoints=np.random.default_rng(frames).random((frames, 17, 2)) * 640,
        scores=np.ones((frames, 17), np.float32),
        fps=np.float32(30),
    )
    raw = bytearray(buffer.getvalue())
    for position, xor in flips:  # anywhere: headers, directory, compressed data
        raw[position % len(raw)] ^= xor
    path = tmp_path / "damaged.npz"
    path.write_bytes(bytes(raw[: len(raw) - cut % len(raw)]))
    _valid_or_keypoint_file_error(load_keypoint_file, path)


@settings(max_examples=40, deadline=None, suppress_health_check=_HEALTH)
@given(
    frames=st.integers(0, 30),
    views=st.integers(0, 10),
    dims=st.sampled_from([(17, 3), (17, 2), (16, 3)]),
    dtype=st.sampled_from([np.float32, np.float64, np.int64, np.uint8]),
    nan_fraction=st.floats(0, 1),
    scale=st.sampled_from([1.0, 1e3, 1e30, 1e300]),
    protocol=st.sampled_from([3, 4, 5]),
    view=st.integers(-1, 9),
)
def test_property_any_numpy_pickle_is_a_valid_track_or_a_keypoint_file_error(
    tmp_path, frames, views, dims, dtype, nan_fraction, scale, protocol, view
):
    rng = np.random.default_rng(frames * 31 + views)
    points = rng.random((views, frames) + dims) * min(scale, 1e300)
    if np.dtype(dtype).kind == "f":
        points[rng.random(points.shape) < nan_fraction] = np.nan
    with np.errstate(over="ignore", invalid="ignore"):
        points = points.astype(dtype)
    path = tmp_path / "generated.pkl"
    path.write_bytes(
        pickle.dumps(
            {"keypoints2d": points, "timestamps": np.arange(frames) * 16}, protocol=protocol
        )
    )
    _valid_or_keypoint_file_error(lambda p: load_aist_keypoints(p, view=view), path)


def _npy_bytes(shape, descr: str, data: bytes) -> bytes:
    """A .npy member with a header declaring ``shape`` / ``descr`` and ``data`` after it."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple(shape)}, }}"
    header = header.encode("latin1")
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


_DECLARED_SIZES = st.one_of(st.integers(0, 40), st.integers(0, 2**62))


@settings(max_examples=150, deadline=None, suppress_health_check=_HEALTH)
@given(
    members=st.dictionaries(
        st.sampled_from(["keypoints", "scores", "fps", "width", "height", "other"]),
        st.tuples(
            st.lists(_DECLARED_SIZES, min_size=0, max_size=4).map(tuple),
            st.sampled_from(["<f4", ">f8", "<f2", "<i8", "|u1", "|b1", "|O", "<c8", "|V8", "<U4"]),
            st.integers(0, 4096),
        ),
        min_size=1,
    ),
    method=st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]),
)
def test_property_declared_npy_shapes_of_any_size_are_valid_or_a_keypoint_file_error(
    tmp_path, members, method
):
    path = tmp_path / "declared.npz"
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, (shape, descr, data_bytes) in members.items():
            archive.writestr(f"{name}.npy", _npy_bytes(shape, descr, b"\x01" * data_bytes))
    _valid_or_keypoint_file_error(load_keypoint_file, path)


@settings(max_examples=150, deadline=None, suppress_health_check=_HEALTH)
@given(
    shape=st.lists(_DECLARED_SIZES, min_size=0, max_size=5).map(tuple),
    code=st.sampled_from(["f4", "f8", "i8", "u1", "b1", "O", "V8", "U4", "c8"]),
    data_bytes=st.integers(0, 4096),
    protocol5=st.booleans(),
)
def test_property_declared_pickle_shapes_of_any_size_are_valid_or_a_keypoint_file_error(
    tmp_path, shape, code, data_bytes, protocol5
):
    # numpy's own pickling, with the shape, dtype and data length chosen by the test
    template = np.zeros((9, 2, 17, 3), np.float32)
    reduced = template.__reduce_ex__(5 if protocol5 else 4)
    dtype = np.zeros(1, np.float32).dtype

    class Crafted:
        def __reduce__(self):
            if protocol5:
                return (reduced[0], (bytearray(data_bytes), dtype, shape, "C"))
            return reduced[0], reduced[1], (1, shape, dtype, False, b"\0" * data_bytes)

    raw = pickle.dumps({"keypoints2d": Crafted()}, protocol=5 if protocol5 else 4)
    raw = raw.replace(b"\x8c\x02f4", b"\x8c" + bytes([len(code)]) + code.encode(), 1)
    path = tmp_path / "declared.pkl"
    path.write_bytes(raw)
    _valid_or_keypoint_file_error(load_aist_keypoints, path)


def test_dvamn_convert_aist_explains_itself(capsys):
    from dvamn.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["convert-aist", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "dvamn convert-aist" in text and "--view N" in text and "unpickles" in text
