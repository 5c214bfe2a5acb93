"""Hostile keypoint files (issue 10, items 1 and 8): nothing runs, nothing explodes.

Every file is built here, by the test (no binary blobs). Each load runs in its own
Python (tests/support/memory.py, the peak restarted after setup) so that its peak-RSS
growth can be measured; it must raise KeypointFileError, leave no side effect, and grow
memory by at most
``MEMORY_FACTOR`` times the file's size plus ``MEMORY_SLACK_MB`` (the bound documented in
dvamn/pose/keypoint_files.py).
"""

import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from dvamn.pose.keypoint_files import MAX_KEYPOINT_FILE_BYTES, MAX_KEYPOINT_FRAMES
from tests.support.memory import measure_action

MEMORY_FACTOR = 3.0
MEMORY_SLACK_MB = 20.0


# --- building pickles opcode by opcode ---------------------------------------------------


def _text(value: str) -> bytes:
    data = value.encode()
    return (
        b"\x8c" + bytes([len(data)]) + data
        if len(data) < 256
        else b"X" + struct.pack("<I", len(data)) + data
    )


def _call(module: str, name: str, *args: bytes, protocol: int = 4) -> bytes:
    """A pickle that resolves ``module``/``name`` with STACK_GLOBAL (dotted names allowed
    by protocol 4) and calls it with the already-encoded ``args``."""
    return (
        b"\x80" + bytes([protocol]) + _text(module) + _text(name) + b"\x93("
        + b"".join(args) + b"tR."
    )  # fmt: skip


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _bytes(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data


def _dtype_f4() -> bytes:
    """numpy.dtype('f4', False, True) with numpy's own state, as numpy pickles it."""
    state = _tuple(_int(3), _text("<"), b"NNN", _int(-1), _int(-1), _int(0))
    return (
        _text("numpy")
        + _text("dtype")
        + b"\x93"
        + _tuple(_text("f4"), b"\x89\x88")
        + (b"R" + state + b"b")
    )


def _array_with_state(shape: bytes, data: bytes, dtype: bytes = b"") -> bytes:
    """_reconstruct(ndarray, (0,), b'b') then BUILD with (1, shape, dtype, False, data)."""
    return (
        b"\x80\x04" + _text("numpy.core.multiarray") + _text("_reconstruct") + b"\x93"
        + _tuple(_text("numpy") + _text("ndarray") + b"\x93", _tuple(_int(0)), _bytes(b"b"))
        + b"R" + _tuple(_int(1), shape, dtype or _dtype_f4(), b"\x89", _bytes(data)) + b"b."
    )  # fmt: skip


def _run_marker_pickle_plainly(raw: bytes, marker) -> bool:
    """Control: does ``raw`` really create ``marker`` when plain pickle loads it?"""
    subprocess.run(
        [sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
        input=raw,
        capture_output=True,
        timeout=60,
    )
    return marker.exists()


# --- measuring one load ------------------------------------------------------------------


def _load_measured(path, loader: str = "load_aist_keypoints"):
    outcome = measure_action(
        setup=f"from dvamn.pose.keypoint_files import {loader} as load\npath = {str(path)!r}",
        action="load(path)",
        reset_peak=True,
    )
    size_mb = os.path.getsize(path) / 2**20 if os.path.exists(path) else 0.0
    return outcome, size_mb


def _assert_refused(path, match: str, loader: str = "load_aist_keypoints", marker=None):
    outcome, size_mb = _load_measured(path, loader)
    assert outcome.error_type == "KeypointFileError", (outcome.error, outcome.traceback)
    assert str(path) in outcome.error and match in outcome.error, outcome.error
    assert outcome.growth_mb <= MEMORY_FACTOR * size_mb + MEMORY_SLACK_MB, (
        f"peak RSS grew {outcome.growth_mb:.1f} MB for a {size_mb:.2f} MB file"
    )
    if marker is not None:
        assert not marker.exists(), "the payload ran"
    return outcome


# --- pickles: code execution -------------------------------------------------------------


def test_runstring_global_does_not_run_its_code(tmp_path):
    marker = tmp_path / "MARKER"
    code = f"open({str(marker)!r}, 'w').close()"
    raw = _call("numpy.testing._private.utils", "runstring", _text(code), b"}")
    assert _run_marker_pickle_plainly(raw, marker)  # the payload is real
    marker.unlink()
    path = tmp_path / "runstring.pkl"
    path.write_bytes(raw)
    _assert_refused(path, "numpy.testing._private.utils.runstring", marker=marker)


def test_dotted_os_system_through_a_numpy_module_does_not_run(tmp_path):
    marker = tmp_path / "MARKER"
    raw = _call("numpy.lib._datasource", "os.system", _text(f"touch {marker}"))
    assert _run_marker_pickle_plainly(raw, marker)
    marker.unlink()
    path = tmp_path / "os_system.pkl"
    path.write_bytes(raw)
    outcome = _assert_refused(path, "os.system", marker=marker)
    assert "dotted names are refused" in outcome.error


def test_os_system_in_a_protocol_0_global_is_refused_before_unpickling(tmp_path):
    marker = tmp_path / "MARKER"
    raw = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    path = tmp_path / "global.pkl"
    path.write_bytes(raw)
    _assert_refused(path, "os.system", marker=marker)


@pytest.mark.parametrize(
    "module,name,args",
    [
        ("builtins", "eval", lambda m: _text(f"open({str(m)!r}, 'w')")),
        ("builtins", "exec", lambda m: _text(f"open({str(m)!r}, 'w')")),
        ("builtins", "getattr", lambda m: _text("x") + _text("upper")),
        ("builtins", "__import__", lambda m: _text("os")),
        ("numpy", "load", lambda m: _text(str(m))),
        ("numpy.core.multiarray", "scalar", lambda m: _text("x")),
        ("numpy", "ndarray.__new__", lambda m: b""),
        ("collections", "OrderedDict", lambda m: b""),
    ],
)
def test_other_globals_an_attacker_would_try_are_refused(tmp_path, module, name, args):
    marker = tmp_path / "MARKER"
    path = tmp_path / "global.pkl"
    path.write_bytes(_call(module, name, args(marker)))
    _assert_refused(path, f"{module}.{name}", marker=marker)


# --- pickles: memory ---------------------------------------------------------------------


def test_numpy_ones_with_a_huge_shape_allocates_nothing(tmp_path):
    path = tmp_path / "ones.pkl"
    path.write_bytes(_call("numpy", "ones", _tuple(_int(2**30), _int(2**30))))
    outcome = _assert_refused(path, "numpy.ones")
    assert outcome.growth_mb < MEMORY_SLACK_MB


def test_reconstruct_with_a_huge_shape_is_refused(tmp_path):
    # numpy's real _reconstruct(ndarray, (2**40,), b'b') would allocate the array.
    raw = (
        b"\x80\x04" + _text("numpy.core.multiarray") + _text("_reconstruct") + b"\x93"
        + _tuple(_text("numpy") + _text("ndarray") + b"\x93", _tuple(b"\x8a\x06" + (2**40).to_bytes(6, "little")), _bytes(b"b"))
        + b"R."
    )  # fmt: skip
    path = tmp_path / "reconstruct.pkl"
    path.write_bytes(raw)
    _assert_refused(path, "_reconstruct with arguments other than")


def test_ndarray_called_directly_is_refused(tmp_path):
    path = tmp_path / "ndarray.pkl"
    path.write_bytes(_call("numpy", "ndarray", _tuple(_int(2**30), _int(2**10))))
    _assert_refused(path, "not a readable AIST++ keypoints2d pickle (TypeError)")


@pytest.mark.parametrize(
    "shape,data,match",
    [
        (_tuple(_int(10**6), _int(10**6)), b"", "over the"),  # 10^12 elements declared
        (_tuple(_int(1000)), b"\0" * 8, "whose data is 8 bytes instead of 4,000"),
        (_tuple(_int(-1)), b"", "not a short tuple of sizes"),
        (_tuple(*[_int(2)] * 20), b"", "not a short tuple of sizes"),
    ],
)
def test_setstate_with_a_shape_the_data_does_not_hold_is_refused(tmp_path, shape, data, match):
    path = tmp_path / "setstate.pkl"
    path.write_bytes(_array_with_state(shape, data))
    _assert_refused(path, match)


def test_the_array_builder_itself_reads_a_well_formed_state(tmp_path):
    # the control for the crafted states above: the same opcodes with a consistent state
    path = tmp_path / "good.pkl"
    inner = _array_with_state(_tuple(_int(1), _int(5), _int(17), _int(3)), b"\0" * 4 * 255)
    path.write_bytes(b"\x80\x04}" + _text("keypoints2d") + inner[2:-1] + b"s.")
    outcome, _ = _load_measured(path)
    assert outcome.error_type is None, outcome.error


@pytest.mark.parametrize(
    "dtype,match",
    [
        ("O", "only plain numeric dtypes"),
        ("V1000000000", "only plain numeric dtypes"),
        ("U10", "only plain numeric dtypes"),
    ],
)
def test_dtypes_other_than_plain_numbers_are_refused(tmp_path, dtype, match):
    path = tmp_path / "dtype.pkl"
    path.write_bytes(_call("numpy", "dtype", _text(dtype), b"\x89\x88"))
    _assert_refused(path, match)


def test_an_object_array_is_refused(tmp_path):
    path = tmp_path / "objects.pkl"
    path.write_bytes(pickle.dumps({"keypoints2d": np.array([1, "os"], dtype=object)}))
    _assert_refused(path, "only plain numeric dtypes")


def test_a_dtype_state_with_fields_is_refused(tmp_path):
    state = _tuple(_int(3), _text("|"), b"N", _tuple(_text("a")), b"N", _int(8), _int(1), _int(16))
    raw = b"\x80\x04" + _text("numpy") + _text("dtype") + b"\x93" + _tuple(_text("f4"), b"\x89\x88")
    path = tmp_path / "dtype_state.pkl"
    path.write_bytes(raw + b"R" + state + b"b.")
    _assert_refused(path, "a dtype state other than a plain byte order")


@pytest.mark.parametrize(
    "target,match",
    [
        (_text("numpy") + _text("dtype") + b"\x93", "a state for a numpy function"),
        (_text("numpy") + _text("ndarray") + b"\x93", "a state for numpy.ndarray"),
    ],
)
def test_a_state_for_an_allowed_global_is_refused(tmp_path, target, match):
    # BUILD (None, {'__defaults__': ...}) would setattr on the object the global names,
    # changing it for every later file this process reads.
    slotstate = b"N}" + _text("__defaults__") + _tuple(b"\x88\x89") + b"s\x86"
    path = tmp_path / "state.pkl"
    path.write_bytes(b"\x80\x04" + target + slotstate + b"b.")
    _assert_refused(path, match)


def test_a_second_state_for_an_array_is_refused(tmp_path):
    raw = pickle.dumps(np.zeros(4, np.float32), protocol=5)[:-1]  # drop STOP
    state = _tuple(_int(1), _tuple(_int(1)), _dtype_f4(), b"\x89", _bytes(b"\0" * 4))
    path = tmp_path / "second_state.pkl"
    path.write_bytes(raw + state + b"b.")
    _assert_refused(path, "a second state for one array")


def test_protocol_5_out_of_band_buffers_are_refused(tmp_path):
    buffers = []
    raw = pickle.dumps(
        {"keypoints2d": np.zeros((9, 10, 17, 3), np.float32)},
        protocol=5,
        buffer_callback=buffers.append,
    )
    assert buffers  # the array's data went out of band
    path = tmp_path / "out_of_band.pkl"
    path.write_bytes(raw)
    _assert_refused(path, "the opcode NEXT_BUFFER")


def test_frombuffer_with_a_shape_its_bytes_do_not_hold_is_refused(tmp_path):
    raw = (
        b"\x80\x05" + _text("numpy._core.numeric") + _text("_frombuffer") + b"\x93"
        + _tuple(b"\x96" + struct.pack("<Q", 8) + b"\0" * 8, _dtype_f4(), _tuple(_int(10**9)), _text("C"))
        + b"R."
    )  # fmt: skip
    path = tmp_path / "frombuffer.pkl"
    path.write_bytes(raw)
    _assert_refused(path, "element limit")


@pytest.mark.parametrize(
    "body,match",
    [
        (b"]" * 100_000 + b"a" * 99_999, "nesting deeper than 64"),  # lists 100k deep
        (b"(" * 200 + b"t" * 200, "nesting deeper than 64"),  # tuples through marks
        (b"]" + b"Na" * 1_000_000, "more than 10,000 opcodes"),  # a list of a million
        (b"]N\x94a" + b"h\x00a" * 2_000_000, "more than 10,000 opcodes"),  # memo references
    ],
)
def test_deep_nesting_and_opcode_floods_are_refused_before_unpickling(tmp_path, body, match):
    path = tmp_path / "nested.pkl"
    path.write_bytes(b"\x80\x04" + body + b".")
    _assert_refused(path, match)


def test_a_declared_length_past_the_end_is_not_allocated(tmp_path):
    path = tmp_path / "bytes8.pkl"
    path.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 2**60) + b"short.")
    outcome = _assert_refused(path, "not a readable AIST++ keypoints2d pickle")
    assert outcome.growth_mb < MEMORY_SLACK_MB


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.pkl"
    with open(path, "wb") as f:  # sparse: the disk holds almost nothing
        f.truncate(MAX_KEYPOINT_FILE_BYTES + 1)
    outcome = measure_action(
        setup=f"from dvamn.pose.keypoint_files import load_aist_keypoints\npath = {str(path)!r}",
        action="load_aist_keypoints(path)",
        reset_peak=True,
    )
    assert outcome.error_type == "KeypointFileError" and "byte limit" in outcome.error
    assert outcome.growth_mb < MEMORY_SLACK_MB  # refused from its size, not read


def test_a_real_sized_aist_pickle_loads_within_the_memory_bound(tmp_path):
    # the bound holds for honest files too: 60 s of 9 views at 60 fps (6.6 MB)
    path = tmp_path / "gBR_sBM_cAll_d04_mBR0_ch01.pkl"
    points = np.random.default_rng(0).random((9, 3600, 17, 3)).astype(np.float32) * 1000
    with open(path, "wb") as f:
        pickle.dump(
            {"keypoints2d": points, "det_scores": np.ones((9, 3600), np.float32),
             "timestamps": np.arange(3600)},
            f,
            protocol=pickle.HIGHEST_PROTOCOL,
        )  # fmt: skip
    outcome, size_mb = _load_measured(path)
    assert outcome.error_type is None, outcome.error
    assert outcome.growth_mb <= MEMORY_FACTOR * size_mb + MEMORY_SLACK_MB


# --- .npz --------------------------------------------------------------------------------


def _npy_header(shape, descr: str = "<f4") -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple(shape)}, }}"
    header = header.encode("latin1")
    padding = 64 - (10 + len(header) + 1) % 64
    return (
        b"\x93NUMPY\x01\x00"
        + struct.pack("<H", len(header) + padding + 1)
        + header
        + (b" " * padding + b"\n")
    )


def _stream_member(archive: zipfile.ZipFile, name: str, header: bytes, data_bytes: int):
    """Write a member of ``header`` + ``data_bytes`` zero bytes without holding them."""
    with archive.open(name, "w", force_zip64=True) as member:
        member.write(header)
        chunk = b"\0" * 2**20
        left = data_bytes
        while left:
            member.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))


def _valid_npz(path, frames: int = 20):
    np.savez_compressed(
        path,
        keypoints=np.random.default_rng(0).random((frames, 17, 2)).astype(np.float32) * 640,
        scores=np.ones((frames, 17), np.float32),
        fps=np.float32(30),
    )


def test_a_zip_bomb_of_a_million_frames_is_refused_before_decompressing(tmp_path):
    path = tmp_path / "bomb.npz"
    frames = 1_000_000
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        _stream_member(archive, "keypoints.npy", _npy_header((frames, 17, 2)), frames * 136)
        _stream_member(archive, "scores.npy", _npy_header((frames, 17)), frames * 68)
        archive.writestr("fps.npy", _npy_header(()) + struct.pack("<f", 60.0))
    size_mb = os.path.getsize(path) / 2**20
    assert size_mb < 0.25  # 204 MB of arrays in 0.2 MB
    outcome = _assert_refused(path, "1,000,000 frames", loader="load_keypoint_file")
    assert f"{MAX_KEYPOINT_FRAMES:,} frame limit" in outcome.error
    assert "field 'keypoints'" in outcome.error


def test_a_zip_header_that_lies_about_the_size_cannot_bring_in_more(tmp_path):
    # The .npy header and the zip entry both say 1,000 frames; the deflate stream holds
    # 100,000. Only what the headers describe is decompressed.
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        header = _npy_header((1000, 17, 2))
        with archive.open("keypoints.npy", "w") as member:
            member.write(header)
            member.write(b"\0" * (100_000 * 136))
        archive.writestr("scores.npy", _npy_header((1000, 17)) + b"\0" * 68_000)
        archive.writestr("fps.npy", _npy_header(()) + struct.pack("<f", 60.0))
    raw = bytearray(path.read_bytes())
    declared = struct.pack("<I", len(header) + 1000 * 136)
    local = raw.index(b"PK\x03\x04")
    raw[local + 22 : local + 26] = declared  # uncompressed size, local header
    central = raw.index(b"PK\x01\x02")
    raw[central + 24 : central + 28] = declared  # and in the central directory
    path.write_bytes(bytes(raw))
    _assert_refused(path, "field 'keypoints' is corrupt", loader="load_keypoint_file")


def test_a_declared_shape_that_the_zip_entry_does_not_hold_is_refused(tmp_path):
    path = tmp_path / "shape.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("keypoints.npy", _npy_header((100_000, 17, 2)) + b"\0" * 136)
    _assert_refused(path, "its zip entry declares", loader="load_keypoint_file")


def test_a_huge_declared_shape_is_refused_not_a_memory_error(tmp_path):
    path = tmp_path / "huge_shape.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("keypoints.npy", _npy_header((10**15, 17, 2)))
    _assert_refused(path, "frame limit", loader="load_keypoint_file")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("fps.npy", _npy_header((10**9, 10**9)))
    _assert_refused(path, "must be a number", loader="load_keypoint_file")


def test_object_arrays_are_never_unpickled(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "objects.npz"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    np.savez(path, keypoints=np.array([Payload()], dtype=object), scores=np.ones((1, 17)), fps=1)
    _assert_refused(path, "holds Python objects", loader="load_keypoint_file", marker=marker)


def test_a_corrupt_member_is_a_keypoint_file_error_naming_the_field(tmp_path):
    path = tmp_path / "corrupt.npz"
    _valid_npz(path, frames=2000)
    raw = bytearray(path.read_bytes())
    start = raw.index(b"keypoints.npy") + 1000  # inside its compressed data
    raw[start : start + 64] = bytes(64)
    path.write_bytes(bytes(raw))
    _assert_refused(path, "field 'keypoints' is corrupt", loader="load_keypoint_file")


def test_a_bad_npy_header_is_a_keypoint_file_error(tmp_path):
    path = tmp_path / "header.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("keypoints.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': __imp\n")
    outcome = _assert_refused(path, "bad .npy header", loader="load_keypoint_file")
    assert "__imp" not in outcome.error  # described, not quoted


@pytest.mark.parametrize("cut", [10, 100, 1000])
def test_a_truncated_archive_is_a_keypoint_file_error(tmp_path, cut):
    path = tmp_path / "truncated.npz"
    _valid_npz(path, frames=500)
    path.write_bytes(path.read_bytes()[:-cut])
    _assert_refused(path, "not a readable .npz file", loader="load_keypoint_file")


def test_an_archive_of_many_members_is_refused_before_zipfile_parses_it(tmp_path):
    path = tmp_path / "members.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for index in range(5000):
            archive.writestr(f"{index}.npy", b"")
    _assert_refused(path, "5,000 members", loader="load_keypoint_file")


def test_a_bzip2_member_is_refused_before_decompressing(tmp_path):
    # bzip2 and lzma members are decompressed without an output bound by zipfile
    path = tmp_path / "bz2.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_BZIP2) as archive:
        archive.writestr("keypoints.npy", _npy_header((10, 17, 2)) + b"\0" * 1360)
    _assert_refused(path, "compression method 12", loader="load_keypoint_file")


def test_a_valid_npz_loads_within_the_memory_bound(tmp_path):
    path = tmp_path / "good.npz"
    _valid_npz(path, frames=18_000)  # 600 s at 30 fps, the longest accepted
    outcome, size_mb = _load_measured(path, loader="load_keypoint_file")
    assert outcome.error_type is None, outcome.error
    assert outcome.growth_mb <= MEMORY_FACTOR * size_mb + MEMORY_SLACK_MB


def test_the_loaders_never_quote_file_content(tmp_path):
    secret = "AKIAIOSFODNN7EXAMPLE-secret"
    for name, loader in (("s.pkl", "load_aist_keypoints"), ("s.npz", "load_keypoint_file")):
        path = tmp_path / name
        path.write_text(f"{secret}\n")
        outcome, _ = _load_measured(path, loader)
        assert outcome.error_type == "KeypointFileError", outcome.error
        assert secret not in outcome.error and "AKIA" not in outcome.error


def test_the_npy_header_helper_writes_what_numpy_writes():
    # _npy_header writes the header numpy itself writes, so the .npz cases are realistic
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((3, 17, 2), np.float32))
    assert buffer.getvalue()[: len(_npy_header((3, 17, 2)))] == _npy_header((3, 17, 2))
