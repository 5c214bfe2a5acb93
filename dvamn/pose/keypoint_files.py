"""Pre-extracted 2D keypoints: our ``.npz`` format and AIST++'s ``keypoints2d`` pickles.

Our format (``--pose keypoints``): beside ``<stem>.mp4`` a file ``<stem>.npz`` holding

    keypoints  float [T, 17, 2]    x, y in pixels, COCO-17 joint order (stored as float32)
    scores     float [T, 17]       confidence per joint; a frame whose scores are all 0
                                   has nobody in it
    fps        scalar              frame rate of the keypoints (frame i is at i / fps s)
    width      scalar, optional    frame size in pixels the coordinates refer to
    height     scalar, optional

AIST++ (``keypoints2d/<sequence>.pkl``, read by ``load_aist_keypoints``): a pickled dict
with ``keypoints2d`` float [9, N, 17, 3] (9 camera views; x, y in pixels of the
1920x1080 videos, confidence; NaN where nothing was detected), ``det_scores`` [9, N]
(0 where nothing was detected) and ``timestamps`` [N] (frame ids of the 60 fps videos).
``convert_aist_pickle`` turns one into our ``.npz`` files (one per camera view), so that
a cluster never has to unpickle; ``dvamn convert-aist`` does it for a folder. The service
reads an uploaded one with the same reader (``aist_keypoints_from_bytes``).

Files come from people we do not control, so both readers check every limit on what is
actually decoded, before anything large is allocated:

- a file is at most ``MAX_KEYPOINT_FILE_BYTES`` (checked before it is read);
- a track is at most ``MAX_KEYPOINT_FRAMES`` frames and ``MAX_DURATION_S`` seconds long,
  at most ``MAX_NOMINAL_FPS`` frames a second;
- ``.npz``: only the known members are read, each only when stored or deflated; a member's
  ``.npy`` header is read first, and its shape, dtype (numeric, never objects) and size
  (against ``MAX_DECODED_BYTES`` for the whole file and against the size the zip entry
  declares) are checked before its data is decompressed; the bytes actually decompressed
  are counted, so a lying zip header cannot exceed the cap;
- ``.pkl``: before unpickling, every opcode is scanned (at most ``MAX_PICKLE_OPCODES`` of
  a plain set, stack at most ``MAX_PICKLE_STACK_DEPTH`` deep, no out-of-band buffers,
  every declared length inside the file); the
  unpickler then resolves only the exact (module, name) pairs of numpy's own array
  pickling (``_ALLOWED_GLOBALS``), each to a checking stand-in that accepts only the
  arguments numpy writes and builds arrays from the bytes in the file itself.

Every refusal is a ``KeypointFileError`` naming the file and what was wrong. Peak memory
while reading a file is at most 3 times its size plus 20 MB (tested; a real pickle takes
about 2 times: the file's bytes and the arrays' bytes).
"""

import io
import logging
import math
import os
import pickle
import pickletools
import re
import zipfile
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from dvamn import storage
from dvamn.constants import (
    MAX_DURATION_S,
    MAX_NOMINAL_FPS,
    NUM_JOINTS,
    POSE_FPS,
    num_pose_frames,
)

log = logging.getLogger(__name__)

AIST_FPS = 60.0
AIST_WIDTH, AIST_HEIGHT = 1920, 1080
AIST_NUM_VIEWS = 9
# AIST video names: gBR_sBM_c01_d04_mBR0_ch01 (genre, situation, camera, dancer, music,
# choreography); the AIST++ sequence holding all 9 cameras replaces c01 with cAll.
_AIST_CAMERA_TAG = re.compile(r"^c(\d{2})$")
_AIST_ALL_CAMERAS_TAG = "cAll"

# --- limits (see the module docstring) ---------------------------------------------------

# A real AIST++ keypoints2d pickle is 0.1-6 MB (48 s at 60 fps: 5.3 MB); 600 s of 9 views
# is 66 MB. Our .npz of 600 s at 240 fps is under 60 MB even as float64.
MAX_KEYPOINT_FILE_BYTES = 256 * 2**20
# Every accepted track fits in the longest accepted duration at the highest frame rate.
MAX_KEYPOINT_FRAMES = math.ceil(MAX_DURATION_S * MAX_NOMINAL_FPS)  # 144,000
# All arrays decoded from one file together (decompressed .npz members, pickled arrays).
MAX_DECODED_BYTES = 256 * 2**20
# Pixel coordinates beyond this are not from any camera (and overflow the features).
MAX_ABS_COORDINATE_PX = 1e6
# A real AIST++ pickle has about 60 opcodes and a stack 10 deep.
MAX_PICKLE_OPCODES = 10_000
MAX_PICKLE_STACK_DEPTH = 64
# Our .npz has at most 5 members; its zip central directory is a few hundred bytes.
MAX_NPZ_MEMBERS = 16
_MAX_ZIP_DIRECTORY_BYTES = 64 * 2**10
_MAX_NPY_HEADER_BYTES = 10_000  # numpy's own default limit
_READ_CHUNK_BYTES = 2**20


class KeypointFileError(ValueError):
    """A keypoint file that cannot be used; the message names the file and the field."""


@dataclass
class KeypointTrack:
    """One person's 2D keypoints over time, at the rate they were stored.

    keypoints: float32 [T, 17, 2] pixels (COCO-17); scores: float32 [T, 17];
    fps: frames per second; width, height: frame size in pixels when known;
    times_s: float64 [T] presentation time of each frame in seconds, when the frames are
    not evenly spaced at ``fps`` (None: frame i is at i / fps).
    """

    keypoints: np.ndarray
    scores: np.ndarray
    fps: float
    width: Optional[int] = None
    height: Optional[int] = None
    times_s: Optional[np.ndarray] = None

    @property
    def num_frames(self) -> int:
        return int(self.keypoints.shape[0])

    def frame_times_s(self) -> np.ndarray:
        """float64 [T]: when each frame is shown, in seconds."""
        if self.times_s is not None:
            return np.asarray(self.times_s, dtype=np.float64)
        return np.arange(self.num_frames, dtype=np.float64) / self.fps

    @property
    def duration_s(self) -> float:
        """Seconds covered: the last frame is shown for one frame period."""
        if self.num_frames == 0:
            return 0.0
        return float(self.frame_times_s()[-1] + 1.0 / self.fps)


def _read_capped(uri: str, what: str) -> bytes:
    """The bytes of ``uri``, refused (KeypointFileError) past MAX_KEYPOINT_FILE_BYTES.

    The size is checked before reading where the filesystem reports it, and the read
    itself stops one byte past the cap, so a size the filesystem misreports cannot
    bring in more. FileNotFoundError passes through.
    """
    fs, path = storage.filesystem(uri)
    try:
        size = fs.size(path)
    except FileNotFoundError:
        raise
    except Exception:  # a filesystem that cannot tell; the capped read below still holds
        size = None
    if size is not None and size > MAX_KEYPOINT_FILE_BYTES:
        raise KeypointFileError(
            f"{uri}: the {what} is {size:,} bytes, over the {MAX_KEYPOINT_FILE_BYTES:,} "
            "byte limit for keypoint files"
        )
    with storage.open_uri(uri, "rb") as f:
        raw = f.read(MAX_KEYPOINT_FILE_BYTES + 1)
    if len(raw) > MAX_KEYPOINT_FILE_BYTES:
        raise KeypointFileError(
            f"{uri}: the {what} is over the {MAX_KEYPOINT_FILE_BYTES:,} byte limit for "
            "keypoint files"
        )
    return raw


def _check_track(uri: str, track: KeypointTrack) -> KeypointTrack:
    """Refuse a track with no frames or past the frame, rate, duration or coordinate limits."""
    if track.num_frames == 0:
        raise KeypointFileError(f"{uri}: the keypoints hold no frames")
    if track.num_frames > MAX_KEYPOINT_FRAMES:
        raise KeypointFileError(
            f"{uri}: {track.num_frames:,} frames, over the {MAX_KEYPOINT_FRAMES:,} frame "
            f"limit ({MAX_DURATION_S:g} s at {MAX_NOMINAL_FPS:g} fps)"
        )
    if not 0 < track.fps <= MAX_NOMINAL_FPS:
        raise KeypointFileError(
            f"{uri}: field 'fps' is {track.fps:g}, over the {MAX_NOMINAL_FPS:g} fps limit"
        )
    duration_s = track.duration_s
    if not duration_s <= MAX_DURATION_S:
        raise KeypointFileError(
            f"{uri}: the keypoints span {duration_s:.6g} s, longer than the "
            f"{MAX_DURATION_S:g} s limit"
        )
    if float(np.abs(track.keypoints).max()) > MAX_ABS_COORDINATE_PX:
        raise KeypointFileError(
            f"{uri}: field 'keypoints' holds coordinates beyond +-{MAX_ABS_COORDINATE_PX:g} "
            "pixels; coordinates are pixels of the video frame"
        )
    return track


def _describe(text: str, limit: int = 80) -> str:
    """A short, printable rendering of text that came from a file (never raw bytes)."""
    shown = ascii(text)[1:-1]
    return shown if len(shown) <= limit else shown[:limit] + "..."


# --- our .npz format ---------------------------------------------------------------------

# field -> (trailing shape of a frame, description); scalars have no frame shape.
_NPZ_ARRAYS = {
    "keypoints": ((NUM_JOINTS, 2), "[T, 17, 2] pixels"),
    "scores": ((NUM_JOINTS,), "[T, 17]"),
}
_NPZ_SCALARS = ("fps", "width", "height")
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # what np.savez(_compressed) writes


def _kind(error: BaseException) -> str:
    """What went wrong, described: zlib's fixed messages, else the error's type only (the
    messages of zipfile and numpy can quote names and headers from the file)."""
    if isinstance(error, zlib.error):
        return f"zlib: {_describe(str(error))}"
    return type(error).__name__


def _check_zip_directory(raw: bytes, uri: str) -> None:
    """Refuse a zip whose central directory is too large before zipfile parses it.

    zipfile builds a Python object per directory entry (about 10x the bytes on disk), so
    a file of millions of empty entries would cost gigabytes. The end-of-directory
    record (found the way zipfile finds it) gives the entry count and directory size; a
    zip64 end record, which a keypoint file never needs, is refused.
    """
    tail_start = max(0, len(raw) - (22 + 0xFFFF))
    position = raw.rfind(b"PK\x05\x06", tail_start)
    if position < 0 or position + 22 > len(raw):
        raise KeypointFileError(f"{uri}: not a readable .npz file (no zip directory)")
    if position >= 20 and raw[position - 20 : position - 16] == b"PK\x06\x07":
        raise KeypointFileError(f"{uri}: a zip64 archive; a keypoint .npz never needs one")
    entries = int.from_bytes(raw[position + 10 : position + 12], "little")
    directory_bytes = int.from_bytes(raw[position + 12 : position + 16], "little")
    if entries > MAX_NPZ_MEMBERS or directory_bytes > _MAX_ZIP_DIRECTORY_BYTES:
        raise KeypointFileError(
            f"{uri}: the archive lists {entries:,} members in a {directory_bytes:,} byte "
            f"directory; a keypoint .npz has at most {MAX_NPZ_MEMBERS}"
        )


def _check_npz_header(uri: str, field: str, shape: Tuple[int, ...], dtype: np.dtype) -> None:
    """Shape and dtype of a member from its .npy header, before its data is read."""
    if dtype.hasobject:
        raise KeypointFileError(
            f"{uri}: field '{field}' holds Python objects (dtype {dtype}); they would have to "
            "be unpickled, which keypoint files never are"
        )
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biuf":
        raise KeypointFileError(f"{uri}: field '{field}' has dtype {dtype}, expected numbers")
    if field in _NPZ_ARRAYS:
        tail, layout = _NPZ_ARRAYS[field]
        if len(shape) != 1 + len(tail) or tuple(shape[1:]) != tail:
            raise KeypointFileError(
                f"{uri}: field '{field}' has shape {list(shape)}, expected {layout}"
            )
        if dtype.kind != "f":
            raise KeypointFileError(
                f"{uri}: field '{field}' has dtype {dtype}, expected float32 ({layout})"
            )
        if shape[0] > MAX_KEYPOINT_FRAMES:
            raise KeypointFileError(
                f"{uri}: field '{field}' declares {shape[0]:,} frames, over the "
                f"{MAX_KEYPOINT_FRAMES:,} frame limit ({MAX_DURATION_S:g} s at "
                f"{MAX_NOMINAL_FPS:g} fps)"
            )
    elif math.prod(shape) != 1:
        raise KeypointFileError(
            f"{uri}: field '{field}' must be a number, got {dtype} of shape {list(shape)}"
        )


def _read_npz_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, field: str, uri: str, budget: int
) -> np.ndarray:
    """One member's array, decompressing at most its checked size (<= ``budget`` bytes)."""
    if info.compress_type not in _ZIP_METHODS:
        raise KeypointFileError(
            f"{uri}: field '{field}' uses zip compression method {info.compress_type}; "
            "only stored and deflated members (np.savez, np.savez_compressed) are read"
        )
    if info.flag_bits & 0x1:
        raise KeypointFileError(f"{uri}: field '{field}' is encrypted")
    with archive.open(info) as member:
        try:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                header = np.lib.format.read_array_header_1_0(
                    member, max_header_size=_MAX_NPY_HEADER_BYTES
                )
            elif version == (2, 0):
                header = np.lib.format.read_array_header_2_0(
                    member, max_header_size=_MAX_NPY_HEADER_BYTES
                )
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
            raise KeypointFileError(
                f"{uri}: field '{field}' is corrupt ({_kind(error)})"
            ) from error
        except Exception as error:  # numpy's header errors quote the header: name the kind
            raise KeypointFileError(
                f"{uri}: field '{field}' has a bad .npy header ({type(error).__name__})"
            ) from error
        shape, fortran_order, dtype = header
        header_bytes = member.tell()
        _check_npz_header(uri, field, shape, dtype)
        count = math.prod(shape)
        data_bytes = count * dtype.itemsize
        if data_bytes > budget:
            raise KeypointFileError(
                f"{uri}: field '{field}' would decompress to {data_bytes:,} bytes, over the "
                f"{MAX_DECODED_BYTES:,} byte limit for one keypoint file"
            )
        if info.file_size != header_bytes + data_bytes:
            raise KeypointFileError(
                f"{uri}: field '{field}' is corrupt: its zip entry declares {info.file_size:,} "
                f"bytes but its .npy header describes {header_bytes + data_bytes:,}"
            )
        array = np.empty(count, dtype=dtype)
        target = memoryview(array).cast("B")
        done = 0
        while done < data_bytes:
            got = member.readinto(target[done : done + _READ_CHUNK_BYTES])
            if not got:
                raise KeypointFileError(
                    f"{uri}: field '{field}' is truncated: {done:,} of {data_bytes:,} bytes"
                )
            done += got
        if member.read(1):  # also makes zipfile check the CRC of what was read
            raise KeypointFileError(f"{uri}: field '{field}' holds more data than its header")
    if fortran_order:
        return array.reshape(shape[::-1]).transpose()
    return array.reshape(shape)


def _read_npz(raw: bytes, uri: str) -> Dict[str, np.ndarray]:
    """The known fields of a keypoint .npz as arrays; every limit checked before decoding."""
    _check_zip_directory(raw, uri)
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except Exception as error:  # BadZipFile, and the OSError/ValueError of a mangled one
        raise KeypointFileError(
            f"{uri}: not a readable .npz file ({type(error).__name__})"
        ) from error
    members: Dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        field = info.filename[: -len(".npy")] if info.filename.endswith(".npy") else None
        if field in _NPZ_ARRAYS or field in _NPZ_SCALARS:
            if field in members:
                raise KeypointFileError(f"{uri}: field '{field}' appears twice in the archive")
            members[field] = info
    arrays = {}
    budget = MAX_DECODED_BYTES
    for field, info in members.items():
        try:
            array = _read_npz_member(archive, info, field, uri, budget)
        except KeypointFileError:
            raise
        except Exception as error:  # zlib.error, BadZipFile (CRC), MemoryError, ...
            raise KeypointFileError(
                f"{uri}: field '{field}' is corrupt ({_kind(error)})"
            ) from error
        budget -= array.nbytes
        arrays[field] = array
    return arrays


def _scalar(data: Dict[str, np.ndarray], name: str, uri: str, required: bool) -> Optional[float]:
    if name not in data:
        if required:
            raise KeypointFileError(f"{uri}: field '{name}' is missing")
        return None
    value = np.asarray(data[name])
    if value.size != 1 or not np.issubdtype(value.dtype, np.number):
        raise KeypointFileError(
            f"{uri}: field '{name}' must be a number, got {value.dtype} of shape {value.shape}"
        )
    number = float(value.reshape(()))
    if not math.isfinite(number) or number <= 0:
        raise KeypointFileError(f"{uri}: field '{name}' must be positive, got {number:.6g}")
    return number


def _float_array(data: Dict[str, np.ndarray], name: str, uri: str) -> np.ndarray:
    tail, layout = _NPZ_ARRAYS[name]
    if name not in data:
        raise KeypointFileError(f"{uri}: field '{name}' is missing (expected {layout})")
    with np.errstate(over="ignore", invalid="ignore"):  # past float32's range: inf, refused
        array = data[name].astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        bad = int(np.argwhere(~np.isfinite(array))[0][0])
        raise KeypointFileError(
            f"{uri}: field '{name}' holds NaN or infinite values (first in frame {bad}; values "
            "past float32's range count as infinite); mark a missing joint or frame with "
            "score 0 and any finite coordinates"
        )
    return array


def load_keypoint_file(uri: str) -> KeypointTrack:
    """Read and validate a keypoint ``.npz`` (see the module docstring for the format).

    Raises ``KeypointFileError`` naming the file and the field when something is wrong,
    including every limit in the module docstring; ``FileNotFoundError`` when it is not
    there.
    """
    data = _read_npz(_read_capped(uri, "file"), uri)
    keypoints = _float_array(data, "keypoints", uri)
    scores = _float_array(data, "scores", uri)
    if len(scores) != len(keypoints):
        raise KeypointFileError(
            f"{uri}: 'keypoints' has {len(keypoints)} frames but 'scores' has {len(scores)}"
        )
    if len(keypoints) == 0:
        raise KeypointFileError(f"{uri}: 'keypoints' holds no frames")
    fps = _scalar(data, "fps", uri, required=True)
    width = _scalar(data, "width", uri, required=False)
    height = _scalar(data, "height", uri, required=False)
    for name, size in (("width", width), ("height", height)):
        if size is not None and size > MAX_ABS_COORDINATE_PX:
            raise KeypointFileError(f"{uri}: field '{name}' is {size:.6g}, not a frame size")
    return _check_track(
        uri,
        KeypointTrack(
            keypoints=keypoints,
            scores=scores,
            fps=fps,
            width=int(round(width)) if width else None,
            height=int(round(height)) if height else None,
        ),
    )


def save_keypoint_file(uri: str, track: KeypointTrack) -> None:
    """Write ``track`` in our ``.npz`` format to a local path or URI."""
    arrays = {
        "keypoints": np.asarray(track.keypoints, dtype=np.float32),
        "scores": np.asarray(track.scores, dtype=np.float32),
        "fps": np.float32(track.fps),
    }
    if track.width is not None:
        arrays["width"] = np.int32(track.width)
    if track.height is not None:
        arrays["height"] = np.int32(track.height)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    if not storage.is_remote(uri):
        os.makedirs(os.path.dirname(os.path.abspath(uri)), exist_ok=True)
    with storage.open_uri(uri, "wb") as f:
        f.write(buffer.getvalue())


# --- AIST++ pickles ----------------------------------------------------------------------


class _Refused(pickle.UnpicklingError):
    """Something in a keypoint pickle that is never loaded."""


# numpy's dtype codes of plain numbers, as numpy pickles them (``dtype('f4', False, True)``).
_PICKLE_DTYPE_CODES = frozenset(
    {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"}
)
# The BUILD state numpy writes for such a dtype: (3, byte order, None, None, None, -1, -1, 0).
_PLAIN_DTYPE_STATE_TAIL = (None, None, None, -1, -1, 0)
# The largest array a keypoint pickle holds: 9 views of the longest track.
MAX_PICKLE_ARRAY_ELEMENTS = AIST_NUM_VIEWS * MAX_KEYPOINT_FRAMES * NUM_JOINTS * 3


class _NdarrayToken:
    """What ``numpy.ndarray`` resolves to: only an argument of ``_reconstruct``. Not
    callable, so a pickle cannot allocate an array of a shape of its choice; no state
    (BUILD) can be given to it."""

    __slots__ = ()

    def __setstate__(self, state) -> None:
        raise _Refused("a state for numpy.ndarray")

    def __repr__(self) -> str:
        return "numpy.ndarray (argument only)"


class _StandIn:
    """A checking stand-in for an allowed numpy function. Calls go to ``build``; a state
    (BUILD) is refused, so a pickle cannot change the stand-in (for example its
    function's defaults) for later files read by the same process."""

    __slots__ = ("_build",)

    def __init__(self, build):
        self._build = build

    def __call__(self, *args):
        return self._build(*args)

    def __setstate__(self, state) -> None:
        raise _Refused("a state for a numpy function")


_NDARRAY = _NdarrayToken()


class _PickledDtype:
    """``numpy.dtype(code, False, True)`` of a plain number; BUILD may set its byte order."""

    def __init__(self, code: str):
        self.dtype = np.dtype(code)

    def __setstate__(self, state) -> None:
        if not (
            isinstance(state, tuple)
            and len(state) == 8
            and state[0] == 3
            and state[1] in ("<", ">", "|", "=")
            and state[2:] == _PLAIN_DTYPE_STATE_TAIL
        ):
            raise _Refused("a dtype state other than a plain byte order")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


def _dtype(code, align=False, copy=True) -> _PickledDtype:
    if not (isinstance(code, str) and code in _PICKLE_DTYPE_CODES) or align or not copy:
        raise _Refused(
            f"numpy.dtype({_describe(repr(code), 40)}, ...): only plain numeric dtypes "
            f"({', '.join(sorted(_PICKLE_DTYPE_CODES))}) are allowed"
        )
    return _PickledDtype(code)


def _checked_size(shape, dtype, data) -> Tuple[Tuple[int, ...], np.dtype]:
    """The shape and dtype of an array built from ``data``, checked before it is built."""
    if not isinstance(dtype, _PickledDtype):
        raise _Refused("an array whose dtype is not a plain numeric numpy.dtype")
    if not (
        isinstance(shape, tuple)
        and len(shape) <= 8
        and all(type(n) is int and n >= 0 for n in shape)
    ):
        raise _Refused("an array shape that is not a short tuple of sizes")
    if not isinstance(data, (bytes, bytearray)):
        raise _Refused("array data that is not bytes in the pickle itself")
    count = math.prod(shape)
    # Sizes next to a 0 count too: numpy refuses views of (0, 2**40, 2**40) as too big.
    if math.prod(max(n, 1) for n in shape) > MAX_PICKLE_ARRAY_ELEMENTS:
        raise _Refused(
            f"an array of shape {list(shape)}, over the {MAX_PICKLE_ARRAY_ELEMENTS:,} element limit"
        )
    if count * dtype.dtype.itemsize != len(data):
        raise _Refused(
            f"an array of shape {list(shape)} ({dtype.dtype}) whose data is {len(data):,} "
            f"bytes instead of {count * dtype.dtype.itemsize:,}"
        )
    return shape, dtype.dtype


class _PickledArray(np.ndarray):
    """An empty array from ``_reconstruct``; its one BUILD fills it from checked state."""

    def __setstate__(self, state) -> None:
        if self.size or getattr(self, "_built", False):
            raise _Refused("a second state for one array")
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise _Refused("an array state other than numpy's (1, shape, dtype, order, data)")
        _, shape, dtype, fortran_order, data = state
        if not isinstance(fortran_order, bool):
            raise _Refused("an array order that is not True or False")
        shape, real_dtype = _checked_size(shape, dtype, data)
        super().__setstate__((1, shape, real_dtype, fortran_order, data))
        self._built = True


def _reconstruct(cls, shape, typecode) -> _PickledArray:
    # numpy pickles an array as _reconstruct(ndarray, (0,), b'b') followed by BUILD.
    if cls is not _NDARRAY or shape != (0,) or typecode != b"b":
        raise _Refused("numpy's _reconstruct with arguments other than (ndarray, (0,), b'b')")
    return np.ndarray.__new__(_PickledArray, (0,), np.uint8)


def _frombuffer(data, dtype, shape, order) -> np.ndarray:
    # Pickle protocol 5 (AIST++ on Python >= 3.8): the data is in the pickle, in-band.
    if order not in ("C", "F"):
        raise _Refused("an array order other than 'C' or 'F'")
    shape, real_dtype = _checked_size(shape, dtype, data)
    array = np.frombuffer(data, dtype=real_dtype).reshape(shape, order=order)
    array = array.view(_PickledArray)  # so that a later BUILD on it is refused too
    array._built = True
    return array


# Exactly the globals numpy's own pickling of arrays refers to, under numpy 1.x
# (numpy.core) and 2.x (numpy._core) names, as AIST++'s pickles (written with
# pickle.HIGHEST_PROTOCOL: 4 or 5) hold them. dict, list and tuple are opcodes, not globals.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _StandIn(_reconstruct),
    ("numpy._core.multiarray", "_reconstruct"): _StandIn(_reconstruct),
    ("numpy.core.numeric", "_frombuffer"): _StandIn(_frombuffer),
    ("numpy._core.numeric", "_frombuffer"): _StandIn(_frombuffer),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _StandIn(_dtype),
}

# The opcodes of protocols 3-5 that plain containers, numbers, strings, bytes and those
# globals need. Refused, among others: INST/OBJ/NEWOBJ (instances of any class),
# PERSID/EXT (outside references), NEXT_BUFFER/READONLY_BUFFER (out-of-band buffers).
_ALLOWED_OPCODES = frozenset(
    {
        "PROTO", "FRAME", "STOP", "MARK", "POP",
        "NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG1",
        "BINFLOAT", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
        "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8",
        "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS",
        "EMPTY_LIST", "LIST", "APPEND", "APPENDS",
        "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
        "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET", "BINGET", "LONG_BINGET",
        "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD",
    }
)  # fmt: skip


def _refuse_global(module: str, name: str) -> None:
    if (module, name) in _ALLOWED_GLOBALS:
        return
    dotted = " (dotted names are refused)" if "." in name else ""
    raise _Refused(
        f"the global {_describe(module)}.{_describe(name)}{dotted}; only numpy's array "
        "reconstruction is allowed"
    )


# Opcodes whose argument is a length-prefixed run of bytes: the scan checks that the run
# is inside the file and skips it without copying (value: bytes of the length prefix).
_BULK_ARGUMENT_LENGTH_BYTES = {
    "SHORT_BINBYTES": 1, "BINBYTES": 4, "BINBYTES8": 8, "BYTEARRAY8": 8,
    "SHORT_BINUNICODE": 1, "BINUNICODE": 4, "BINUNICODE8": 8,
}  # fmt: skip
_OPCODES_BY_CODE = {opcode.code.encode("latin-1"): opcode for opcode in pickletools.opcodes}


class _Unreadable(ValueError):
    """Bytes that are not a complete pickle (our own description, never the content)."""


def _scan_pickle(raw: bytes) -> None:
    """Walk every opcode without running any; refuse what a keypoint pickle never has.

    Each opcode is checked before its argument is read (pickletools' opcode table and
    argument readers); the long byte runs of data are checked to lie inside the file and
    skipped, not copied, so a declared length is never an allocation. The stack is
    simulated to bound nesting.
    """
    stream = io.BytesIO(raw)
    opcodes = 0
    depth = 0
    marks: List[int] = []
    while True:
        position = stream.tell()
        code = stream.read(1)
        opcode = _OPCODES_BY_CODE.get(code)
        if opcode is None:
            raise _Unreadable(
                f"an unknown opcode at byte {position}" if code else "it ends before STOP"
            )
        opcodes += 1
        if opcodes > MAX_PICKLE_OPCODES:
            raise _Refused(f"more than {MAX_PICKLE_OPCODES:,} opcodes")
        if opcode.name not in _ALLOWED_OPCODES:
            raise _Refused(f"the opcode {opcode.name} (at byte {position})")
        if opcode.name in _BULK_ARGUMENT_LENGTH_BYTES:
            prefix = stream.read(_BULK_ARGUMENT_LENGTH_BYTES[opcode.name])
            length = int.from_bytes(prefix, "little")
            if len(prefix) != _BULK_ARGUMENT_LENGTH_BYTES[opcode.name] or (
                stream.tell() + length > len(raw)
            ):
                raise _Unreadable(
                    f"{opcode.name} at byte {position} declares {length:,} bytes past the end"
                )
            stream.seek(length, io.SEEK_CUR)
        elif opcode.arg is not None:
            argument = opcode.arg.reader(stream)
            if opcode.name == "GLOBAL":
                module, _, name = str(argument).partition(" ")
                _refuse_global(module, name)
        before, after = opcode.stack_before, opcode.stack_after
        if pickletools.markobject in before:
            if not marks:
                raise _Unreadable(f"{opcode.name} without a MARK at byte {position}")
            depth = marks.pop() - before.index(pickletools.markobject)
        else:
            depth -= len(before)
        if pickletools.markobject in after:
            marks.append(depth)
        depth = max(depth, 0) + len(after)
        if depth > MAX_PICKLE_STACK_DEPTH:
            raise _Refused(f"nesting deeper than {MAX_PICKLE_STACK_DEPTH} (at byte {position})")
        if opcode.name == "STOP":
            return


class _KeypointUnpickler(pickle.Unpickler):
    """Resolves only ``_ALLOWED_GLOBALS``, to checking stand-ins (pickles can run code)."""

    def find_class(self, module: str, name: str):
        _refuse_global(module, name)
        return _ALLOWED_GLOBALS[(module, name)]

    def persistent_load(self, pid):
        raise _Refused("a persistent reference")


def _read_aist_pickle(uri: str) -> dict:
    """The dict of an AIST++ keypoints2d pickle, read with every check of the module
    docstring; its arrays are plain ndarrays."""
    return _parse_aist_pickle(_read_capped(uri, "pickle"), uri)


def _parse_aist_pickle(raw: bytes, uri: str) -> dict:
    """``_read_aist_pickle`` of bytes already read (at most MAX_KEYPOINT_FILE_BYTES);
    ``uri`` names them in messages."""
    if len(raw) > MAX_KEYPOINT_FILE_BYTES:
        raise KeypointFileError(
            f"{uri}: the pickle is {len(raw):,} bytes, over the {MAX_KEYPOINT_FILE_BYTES:,} "
            "byte limit for keypoint files"
        )
    try:
        _scan_pickle(raw)
        data = _KeypointUnpickler(io.BytesIO(raw)).load()
    except _Refused as error:
        raise KeypointFileError(f"{uri}: refused to unpickle {error}") from error
    except _Unreadable as error:
        raise KeypointFileError(
            f"{uri}: not a readable AIST++ keypoints2d pickle ({error})"
        ) from error
    except Exception as error:  # a broken pickle fails in many ways: name the kind
        raise KeypointFileError(
            f"{uri}: not a readable AIST++ keypoints2d pickle ({_kind(error)})"
        ) from error
    if not isinstance(data, dict) or "keypoints2d" not in data:
        raise KeypointFileError(f"{uri}: expected a dict with 'keypoints2d' (AIST++ layout)")
    arrays = {}
    for name in ("keypoints2d", "det_scores", "timestamps"):
        if name in data:
            if not isinstance(data[name], np.ndarray):
                raise KeypointFileError(
                    f"{uri}: '{name}' is a {type(data[name]).__name__}, expected a numpy array"
                )
            arrays[name] = np.asarray(data[name])  # the plain ndarray of a _PickledArray
    return arrays


def _aist_times_s(timestamps: Optional[np.ndarray], num_frames: int) -> Optional[np.ndarray]:
    """Frame times in seconds from AIST++ ``timestamps`` (frame ids, unit not documented).

    The ids are evenly spaced for complete sequences; dividing by their median step makes
    the result independent of their unit, and keeps real gaps (frames missing in every
    view) as gaps in time.
    """
    if timestamps is None:
        return None
    stamps = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    if len(stamps) != num_frames or num_frames < 2 or not np.all(np.isfinite(stamps)):
        return None
    steps = np.diff(stamps)
    step = float(np.median(steps))
    if step <= 0 or np.any(steps <= 0):
        return None
    return (stamps - stamps[0]) / step / AIST_FPS


def _aist_all_views(data: dict, uri: str) -> np.ndarray:
    """``keypoints2d`` [views, N, 17, 3], its layout checked."""
    all_views = data["keypoints2d"]
    if all_views.ndim != 4 or all_views.shape[2:] != (NUM_JOINTS, 3) or not all_views.shape[0]:
        raise KeypointFileError(
            f"{uri}: 'keypoints2d' has shape {list(all_views.shape)}, expected "
            "[views, N, 17, 3] (x, y, confidence)"
        )
    if all_views.dtype.kind not in "iuf":
        raise KeypointFileError(f"{uri}: 'keypoints2d' has dtype {all_views.dtype}, expected float")
    return all_views


def _aist_view(data: dict, uri: str, view: int) -> KeypointTrack:
    """One camera view of the arrays of an AIST++ pickle (see ``load_aist_keypoints``)."""
    all_views = _aist_all_views(data, uri)
    if not 0 <= view < all_views.shape[0]:
        raise KeypointFileError(
            f"{uri}: view {view} does not exist (the file has views 0..{all_views.shape[0] - 1})"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        points = all_views[view].astype(np.float32)  # (N, 17, 3)
    keypoints = points[..., :2]
    scores = points[..., 2]
    missing = ~np.isfinite(keypoints).all(axis=(1, 2)) | ~np.isfinite(scores).all(axis=1)
    if "det_scores" in data:
        det_scores = data["det_scores"]
        if det_scores.ndim == 2 and det_scores.shape == all_views.shape[:2]:
            missing |= ~(det_scores[view] > 0)
    keypoints[missing] = 0.0
    scores[missing] = 0.0
    scores = np.clip(scores, 0.0, None)
    return _check_track(
        uri,
        KeypointTrack(
            keypoints=np.ascontiguousarray(keypoints),
            scores=np.ascontiguousarray(scores),
            fps=AIST_FPS,
            width=AIST_WIDTH,
            height=AIST_HEIGHT,
            times_s=_aist_times_s(data.get("timestamps"), len(keypoints)),
        ),
    )


def load_aist_keypoints(uri: str, view: int = 0) -> KeypointTrack:
    """One camera view of an AIST++ ``keypoints2d/<sequence>.pkl`` as a KeypointTrack.

    ``view`` is 0..8 (camera c01..c09). NaN keypoints and frames whose detection score is
    0 become score-0 frames (nobody), at 60 fps and 1920x1080. The pickle is read with the
    checks of the module docstring; anything refused is a ``KeypointFileError``.
    """
    return _aist_view(_read_aist_pickle(uri), uri, view)


def aist_keypoints_from_bytes(raw: bytes, name: str, view: int = 0) -> KeypointTrack:
    """One camera view of an AIST++ ``keypoints2d`` pickle given as bytes (an upload to
    the service), read with every check of ``load_aist_keypoints``, on the 60 fps grid
    of its timestamps (as ``convert_aist_pickle`` writes it: gaps are score-0 frames).
    ``name`` names the bytes in messages. Anything refused is a ``KeypointFileError``."""
    return _on_uniform_grid(_aist_view(_parse_aist_pickle(raw, name), name, view))


def _on_uniform_grid(track: KeypointTrack) -> KeypointTrack:
    """The track at evenly spaced frames of its ``fps``: each frame at the grid slot of its
    time; slots no frame falls on (gaps) get score 0, which reads as nobody."""
    if track.times_s is None:
        return track
    slots = np.rint(track.frame_times_s() * track.fps).astype(np.int64)
    num_slots = int(slots[-1]) + 1 if len(slots) else 0
    keypoints = np.zeros((num_slots, NUM_JOINTS, 2), np.float32)
    scores = np.zeros((num_slots, NUM_JOINTS), np.float32)
    keypoints[slots] = track.keypoints
    scores[slots] = track.scores
    return KeypointTrack(keypoints, scores, track.fps, track.width, track.height)


def aist_video_stem(sequence_name: str, view: int) -> str:
    """The AIST video name of one view of a sequence: ``gBR_sBM_cAll_d04_mBR0_ch01``, view
    2 -> ``gBR_sBM_c03_d04_mBR0_ch01``; a name without ``cAll`` gets ``_c03`` appended."""
    stem = os.path.splitext(os.path.basename(sequence_name))[0]
    camera = f"c{view + 1:02d}"
    tags = stem.split("_")
    if _AIST_ALL_CAMERAS_TAG in tags:
        tags[tags.index(_AIST_ALL_CAMERAS_TAG)] = camera
        return "_".join(tags)
    return f"{stem}_{camera}"


def convert_aist_pickle(uri: str, out_dir: str, view: Optional[int] = None) -> List[str]:
    """Convert one AIST++ ``keypoints2d`` pickle to our ``.npz`` format, once, so that
    extraction on a cluster never unpickles.

    Writes ``<out_dir>/<video stem>.npz`` for every camera view (or only ``view``, 0..8),
    named like the AIST video of that view (``aist_video_stem``), so that ``dvamn extract
    --pose keypoints --keypoints-dir <out_dir>`` finds them. Frames are placed on the
    60 fps grid at their timestamps; frames missing in every view become score-0 frames.
    Returns the URIs written. Raises ``KeypointFileError`` (nothing written) for a file
    the hardened reader refuses.
    """
    data = _read_aist_pickle(uri)
    views = [view] if view is not None else list(range(_aist_all_views(data, uri).shape[0]))
    tracks = [_on_uniform_grid(_aist_view(data, uri, v)) for v in views]  # all checked first
    written = []
    for v, track in zip(views, tracks):
        target = storage.join(out_dir, f"{aist_video_stem(uri, v)}.npz")
        save_keypoint_file(target, track)
        written.append(target)
    return written


def aist_sequence_name(video_name: str) -> Optional[Tuple[str, int]]:
    """``gBR_sBM_c01_d04_mBR0_ch01[.mp4]`` -> (``gBR_sBM_cAll_d04_mBR0_ch01``, view 0).

    None when the name does not follow AIST's naming.
    """
    stem = os.path.splitext(os.path.basename(video_name))[0]
    tags = stem.split("_")
    for index, tag in enumerate(tags):
        match = _AIST_CAMERA_TAG.match(tag)
        if match and len(tags) >= 3:
            camera = int(match.group(1))
            if 1 <= camera <= AIST_NUM_VIEWS:
                tags[index] = "cAll"
                return "_".join(tags), camera - 1
    return None


def aist_view_from_name(video_uri: str) -> int:
    """The AIST++ view (camera number - 1) of an AIST video name; 0 when it has none."""
    parsed = aist_sequence_name(video_uri)
    return parsed[1] if parsed else 0


def find_keypoint_file(video_uri: str, keypoints_dir: Optional[str] = None) -> str:
    """The keypoint file for a video.

    Looks, in order, for ``<keypoints_dir>/<stem>.npz``, then (AIST video names)
    ``<keypoints_dir>/<sequence>.pkl`` and ``<keypoints_dir>/keypoints2d/<sequence>.pkl``,
    then ``<stem>.npz`` beside the video. Raises ``FileNotFoundError`` listing the places
    looked at.
    """
    stem_uri = os.path.splitext(video_uri)[0]
    stem = os.path.basename(stem_uri)
    candidates = []
    if keypoints_dir:
        candidates.append(storage.join(keypoints_dir, f"{stem}.npz"))
        aist = aist_sequence_name(stem)
        if aist:
            candidates.append(storage.join(keypoints_dir, f"{aist[0]}.pkl"))
            candidates.append(storage.join(keypoints_dir, "keypoints2d", f"{aist[0]}.pkl"))
    candidates.append(f"{stem_uri}.npz")
    for candidate in candidates:
        if storage.exists(candidate):
            return candidate
    raise FileNotFoundError(
        f"no keypoint file for {video_uri}: looked for {', '.join(candidates)}. Write "
        f"<stem>.npz beside the video, or pass --keypoints-dir, or use a pose model "
        f"(--pose rtmo) instead of --pose keypoints"
    )


def load_keypoints_for_video(
    video_uri: str, keypoints_dir: Optional[str] = None, view: Optional[int] = None
) -> KeypointTrack:
    """Find and load the keypoint file of a video (our ``.npz`` or an AIST++ ``.pkl``).

    For AIST++ the view is ``view`` when given, else the camera in the video's name.
    """
    path = find_keypoint_file(video_uri, keypoints_dir)
    if path.endswith(".pkl"):
        return load_aist_keypoints(
            path, view if view is not None else aist_view_from_name(video_uri)
        )
    return load_keypoint_file(path)


# --- resampling to the pose rate ---------------------------------------------------------


def resample_track(
    track: KeypointTrack, target_fps: float = POSE_FPS, num_frames: Optional[int] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """Keypoints at ``target_fps``: output frame i is the source frame shown at i / target_fps.

    "Shown at" means the latest source frame whose time is <= i / target_fps (the frame
    on screen then), which matches how the video decoder samples frames. ``num_frames``
    defaults to the track's duration at ``target_fps``; output frames past the end of
    the track get score 0 (nobody) so that gap filling treats them as missing.

    Returns keypoints float32 [num_frames, 17, 2] and scores float32 [num_frames, 17].
    """
    if num_frames is None:
        num_frames = (
            num_pose_frames(track.duration_s)
            if target_fps == POSE_FPS
            else int(math.floor(track.duration_s * target_fps + 1e-6))
        )
    keypoints = np.zeros((num_frames, NUM_JOINTS, 2), dtype=np.float32)
    scores = np.zeros((num_frames, NUM_JOINTS), dtype=np.float32)
    if num_frames == 0 or track.num_frames == 0:
        return keypoints, scores
    source_times = track.frame_times_s()
    target_times = np.arange(num_frames, dtype=np.float64) / target_fps
    # 1e-6 s tolerance: 6 / 60 and 1 / 10 must pick the same instant despite rounding.
    index = np.searchsorted(source_times, target_times + 1e-6, side="right") - 1
    index = np.clip(index, 0, track.num_frames - 1)
    inside = target_times < track.duration_s - 1e-6
    keypoints[inside] = track.keypoints[index[inside]]
    scores[inside] = track.scores[index[inside]]
    if not inside.all():
        log.debug(
            "keypoints cover %.2f s; %d of %d frames past their end are marked missing",
            track.duration_s,
            int((~inside).sum()),
            num_frames,
        )
    return keypoints, scores
