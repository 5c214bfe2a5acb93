"""2D pose estimation on video frames with rtmlib's ONNX models, in batches.

One small interface (``PoseEstimator``): ``estimator(frames)`` takes uint8 BGR frames
[B, H, W, 3] and returns one ``FramePoses`` per frame (every person found). Two
implementations over rtmlib's own classes and their pre/postprocessing:

- ``RTMOEstimator``: RTMO, one stage (people and keypoints in one pass), the default.
- ``TwoStageEstimator``: a YOLOX person detector, then RTMPose on each person's crop.

rtmlib calls its models one image at a time; here the frames (or crops) of a batch go
through the ONNX session together whenever the model's batch dimension is dynamic.

Weights: ``load_pose_estimator`` takes rtmlib's default URL for the model (cached on first
use in rtmlib's folder, ``~/.cache/rtmlib/hub/checkpoints``), a local path, an ``s3://``
or any fsspec URI, or an http(s) URL. When they cannot be had it raises
``PoseWeightsError`` naming the flags that fix it, before any frame is processed.
"""

import contextlib
import io
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from dvamn import storage
from dvamn.constants import NUM_JOINTS, POSE_FRAME_BATCH

log = logging.getLogger(__name__)

POSE_KINDS = ("rtmo", "rtmpose")
MODES = ("lightweight", "balanced", "performance")
# rtmlib's YOLOX keeps boxes scoring above 0.3 when the ONNX file contains NMS (the
# rtmlib models do); the same threshold is used here.
YOLOX_SCORE_THR = 0.3


class PoseWeightsError(RuntimeError):
    """Pose model weights that cannot be had; the message names the flags that fix it."""


@dataclass
class FramePoses:
    """Every person found in one frame (N people, possibly 0).

    keypoints float32 [N, 17, 2] pixels of the original frame (COCO-17); scores float32
    [N, 17]; boxes float32 [N, 4] x1, y1, x2, y2 pixels; box_scores float32 [N].
    """

    keypoints: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    box_scores: np.ndarray

    @classmethod
    def empty(cls) -> "FramePoses":
        return cls(
            keypoints=np.zeros((0, NUM_JOINTS, 2), np.float32),
            scores=np.zeros((0, NUM_JOINTS), np.float32),
            boxes=np.zeros((0, 4), np.float32),
            box_scores=np.zeros((0,), np.float32),
        )

    @classmethod
    def of(cls, keypoints, scores, boxes, box_scores) -> "FramePoses":
        """Build with the fixed dtypes and shapes, whatever the inputs were."""
        return cls(
            keypoints=np.asarray(keypoints, np.float32).reshape(-1, NUM_JOINTS, 2),
            scores=np.asarray(scores, np.float32).reshape(-1, NUM_JOINTS),
            boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
            box_scores=np.asarray(box_scores, np.float32).reshape(-1),
        )

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])


class PoseEstimator(ABC):
    """Frames in, people out. ``name`` and ``weights`` are recorded beside every output."""

    name: str  # e.g. "rtmo", "yolox+rtmpose"
    weights: str  # where the weights came from + sha256 prefix
    device: str  # "cpu" or "cuda[:N]"

    @abstractmethod
    def __call__(self, frames: Union[np.ndarray, Sequence[np.ndarray]]) -> List[FramePoses]:
        """uint8 BGR frames [B, H, W, 3] -> one FramePoses per frame."""


# --- ONNX Runtime sessions run in batches -----------------------------------------------


class BatchedSession:
    """Runs a batch through an ONNX Runtime session, as far as the model allows.

    The batch dimension of the model's first input decides: dynamic -> chunks of
    ``max_batch``; fixed to k -> chunks of k (the last one padded); 1 -> one at a time.
    Some exported models accept a dynamic batch but still answer for one image only
    (e.g. NMS inside the graph); that is detected on the first run and the session falls
    back to one image at a time.
    """

    def __init__(self, session, max_batch: int = POSE_FRAME_BATCH, label: str = "model"):
        self.session = session
        self.label = label
        model_input = session.get_inputs()[0]
        self.input_name = model_input.name
        self.output_names = [o.name for o in session.get_outputs()]
        batch_dim = model_input.shape[0] if model_input.shape else 1
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        self.chunk = self.fixed_batch or max(1, int(max_batch))

    def run(self, inputs: np.ndarray) -> List[List[np.ndarray]]:
        """inputs float32 [B, C, H, W] -> for each item, its outputs with batch dim 1."""
        per_item: List[List[np.ndarray]] = []
        start = 0
        while start < len(inputs):
            chunk = inputs[start : start + self.chunk]
            per_item.extend(self._run_chunk(chunk))
            start += len(chunk)
        return per_item

    def _run_chunk(self, chunk: np.ndarray) -> List[List[np.ndarray]]:
        count = len(chunk)
        if self.fixed_batch and count < self.fixed_batch:
            pad = np.repeat(chunk[-1:], self.fixed_batch - count, axis=0)
            chunk = np.concatenate([chunk, pad])
        outputs = self.session.run(self.output_names, {self.input_name: chunk})
        if len(chunk) > 1 and any(o.shape[0] != len(chunk) for o in outputs):
            log.warning(
                "%s: the model took a batch of %d but answered for %d; running one image "
                "at a time from now on",
                self.label,
                len(chunk),
                outputs[0].shape[0],
            )
            self.chunk, self.fixed_batch = 1, None
            return [self._run_chunk(chunk[i : i + 1])[0] for i in range(count)]
        return [[o[i : i + 1] for o in outputs] for i in range(count)]


def _to_nchw(images: Sequence[np.ndarray]) -> np.ndarray:
    """Preprocessed images [H, W, 3] -> float32 [B, 3, H, W], as rtmlib's inference does."""
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2), dtype=np.float32)


def _static_hw(session) -> Optional[Tuple[int, int]]:
    """(H, W) of the model's input when fixed in the ONNX file, else None."""
    shape = session.get_inputs()[0].shape
    if len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape[2:]):
        return int(shape[2]), int(shape[3])
    return None


def _frames_list(frames: Union[np.ndarray, Sequence[np.ndarray]]) -> List[np.ndarray]:
    frames = list(frames)
    for frame in frames:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(
                f"pose estimators take uint8 BGR frames [H, W, 3], got {frame.dtype} "
                f"{list(frame.shape)}"
            )
    return frames


def resolve_onnx_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when ONNX Runtime has its CUDA provider, else 'cpu'."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if device == "auto":
        return "cuda" if "CUDAExecutionProvider" in available else "cpu"
    if device.startswith("cuda") and "CUDAExecutionProvider" not in available:
        raise RuntimeError(
            f"device {device!r} needs ONNX Runtime's CUDA provider, which this install "
            "lacks: pip install 'dvamn[gpu]' and uninstall the CPU onnxruntime, or use "
            "--device cpu"
        )
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', not {device!r}")
    return device


def _build_rtmlib_tool(tool_class, path: str, device: str, num_threads: Optional[int], **kwargs):
    """An rtmlib model (RTMO, YOLOX, RTMPose) on ONNX Runtime, its print() kept quiet.

    rtmlib builds its session without options; when ``num_threads`` is given (several
    actors sharing a machine) the session is rebuilt with that many intra-op threads.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        tool = tool_class(path, backend="onnxruntime", device=device, **kwargs)
    if num_threads:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(num_threads)
        options.inter_op_num_threads = 1
        tool.session = onnxruntime.InferenceSession(
            path, sess_options=options, providers=tool.session.get_providers()
        )
    log.info("loaded %s on %s (%s)", path, device, ", ".join(tool.session.get_providers()))
    return tool


# --- RTMO (one stage) --------------------------------------------------------------------


class RTMOEstimator(PoseEstimator):
    """RTMO through rtmlib's ``RTMO`` class: its letterbox preprocessing, batched inference,
    and its postprocessing (rescale + NMS) done per frame keeping the boxes too."""

    name = "rtmo"

    def __init__(
        self,
        model_path: str,
        weights: str,
        device: str = "cpu",
        score_thr: float = 0.7,
        nms_thr: float = 0.45,
        max_batch: int = POSE_FRAME_BATCH,
        num_threads: Optional[int] = None,
    ):
        from rtmlib import RTMO

        self.weights = weights
        self.device = device
        self.score_thr = score_thr
        self.nms_thr = nms_thr
        self._rtmo = _build_rtmlib_tool(RTMO, model_path, device, num_threads)
        # rtmlib's preprocess letterboxes to model_input_size = (H, W); take the model's own.
        self._rtmo.model_input_size = _static_hw(self._rtmo.session) or (640, 640)
        self._session = BatchedSession(self._rtmo.session, max_batch, label=f"RTMO {model_path}")

    def __call__(self, frames: Union[np.ndarray, Sequence[np.ndarray]]) -> List[FramePoses]:
        frames = _frames_list(frames)
        if not frames:
            return []
        prepared = [self._rtmo.preprocess(frame) for frame in frames]
        outputs = self._session.run(_to_nchw([image for image, _ in prepared]))
        return [self._postprocess(item, ratio) for item, (_, ratio) in zip(outputs, prepared)]

    def _postprocess(self, outputs: List[np.ndarray], ratio: float) -> FramePoses:
        """rtmlib's RTMO.postprocess, keeping boxes and returning nobody (not one person of
        zeros) when nothing passes the threshold. dets (1, N, 5); keypoints (1, N, 17, 3)."""
        from rtmlib.tools.object_detection.post_processings import multiclass_nms

        dets, poses = outputs[0], outputs[1]
        boxes = dets[0, :, :4] / ratio
        box_scores = dets[0, :, 4]
        if len(boxes) == 0:
            return FramePoses.empty()
        _, keep = multiclass_nms(
            boxes, box_scores[:, None], nms_thr=self.nms_thr, score_thr=self.score_thr
        )
        if keep is None:
            return FramePoses.empty()
        return FramePoses.of(
            keypoints=poses[0, keep, :, :2] / ratio,
            scores=poses[0, keep, :, 2],
            boxes=boxes[keep],
            box_scores=box_scores[keep],
        )


# --- YOLOX + RTMPose (two stages) --------------------------------------------------------


class TwoStageEstimator(PoseEstimator):
    """rtmlib's ``YOLOX`` person detector, then ``RTMPose`` on each person's crop.

    Frames go through YOLOX in batches; then all crops of all frames of the call go
    through RTMPose in batches. A frame where YOLOX finds nobody has nobody (rtmlib would
    run RTMPose on the whole frame instead, which invents a person).
    """

    name = "yolox+rtmpose"

    def __init__(
        self,
        detector_path: str,
        pose_path: str,
        weights: str,
        device: str = "cpu",
        det_score_thr: float = YOLOX_SCORE_THR,
        max_batch: int = POSE_FRAME_BATCH,
        num_threads: Optional[int] = None,
    ):
        from rtmlib import YOLOX, RTMPose

        self.weights = weights
        self.device = device
        self.det_score_thr = det_score_thr
        self._det = _build_rtmlib_tool(YOLOX, detector_path, device, num_threads)
        self._det.model_input_size = _static_hw(self._det.session) or (640, 640)
        self._pose = _build_rtmlib_tool(RTMPose, pose_path, device, num_threads)
        pose_hw = _static_hw(self._pose.session) or (256, 192)
        self._pose.model_input_size = (pose_hw[1], pose_hw[0])  # RTMPose wants (w, h)
        self._det_session = BatchedSession(self._det.session, max_batch, f"YOLOX {detector_path}")
        self._pose_session = BatchedSession(self._pose.session, max_batch, f"RTMPose {pose_path}")

    def __call__(self, frames: Union[np.ndarray, Sequence[np.ndarray]]) -> List[FramePoses]:
        frames = _frames_list(frames)
        if not frames:
            return []
        prepared = [self._det.preprocess(frame) for frame in frames]
        det_outputs = self._det_session.run(_to_nchw([image for image, _ in prepared]))
        detections = [
            self._detections(item, ratio) for item, (_, ratio) in zip(det_outputs, prepared)
        ]

        crops, owners = [], []  # one RTMPose input per (frame, box)
        for frame_index, (boxes, _) in enumerate(detections):
            for box in boxes:
                image, center, scale = self._pose.preprocess(frames[frame_index], box)
                crops.append((image, center, scale))
                owners.append(frame_index)
        pose_outputs = self._pose_session.run(_to_nchw([c[0] for c in crops])) if crops else []

        keypoints = [[] for _ in frames]
        scores = [[] for _ in frames]
        for (_, center, scale), item, frame_index in zip(crops, pose_outputs, owners):
            kpts, kpt_scores = self._pose.postprocess(item, center, scale)  # (1, 17, 2), (1, 17)
            keypoints[frame_index].append(kpts[0])
            scores[frame_index].append(kpt_scores[0])
        results = []
        for frame_index, (boxes, box_scores) in enumerate(detections):
            if len(boxes) == 0:
                results.append(FramePoses.empty())
                continue
            results.append(
                FramePoses.of(keypoints[frame_index], scores[frame_index], boxes, box_scores)
            )
        return results

    def _detections(self, outputs: List[np.ndarray], ratio: float) -> Tuple[np.ndarray, np.ndarray]:
        """Person boxes [N, 4] (original pixels) and their scores [N] for one frame."""
        raw = outputs[0]
        if raw.shape[-1] == 5:
            # NMS inside the ONNX graph (rtmlib's models): dets (1, N, 5) = x1, y1, x2, y2, score.
            boxes = raw[0, :, :4] / ratio
            box_scores = raw[0, :, 4]
        else:
            # Raw YOLOX head: rtmlib decodes the grid and runs NMS; it does not return
            # scores, so they become NaN and tracking falls back to keypoint scores.
            boxes = np.asarray(self._det.postprocess(raw.copy(), ratio)).reshape(-1, 4)
            box_scores = np.full(len(boxes), np.nan)
        # A box under a pixel wide or high would make RTMPose's crop transform singular.
        keep = ~(box_scores <= self.det_score_thr) & (boxes[:, 2] - boxes[:, 0] >= 1.0)
        keep &= boxes[:, 3] - boxes[:, 1] >= 1.0
        return boxes[keep].astype(np.float32), box_scores[keep].astype(np.float32)


# --- weights and the factory -------------------------------------------------------------


@dataclass
class ModelDefaults:
    """rtmlib's preset for a pose kind and mode: model URLs."""

    pose_url: str
    detector_url: Optional[str]


def rtmlib_defaults(kind: str, mode: str = "balanced") -> ModelDefaults:
    """rtmlib's default model URLs (``rtmlib.Body``'s presets) for ``kind`` and ``mode``."""
    from rtmlib.tools.solution.body import Body

    if kind not in POSE_KINDS:
        raise ValueError(f"pose kind must be one of {', '.join(POSE_KINDS)}, not {kind!r}")
    if mode not in MODES:
        raise ValueError(f"pose mode must be one of {', '.join(MODES)}, not {mode!r}")
    if kind == "rtmo":
        return ModelDefaults(Body.RTMO_MODE[mode]["pose"], None)
    return ModelDefaults(Body.MODE[mode]["pose"], Body.MODE[mode]["det"])


_FLAG_HINT = (
    "give local or s3:// ONNX files with --pose-model (and --pose-detector for "
    "--pose rtmpose), or read keypoint files with --pose keypoints"
)


def resolve_weights(spec: Optional[str], default_url: str, what: str) -> Tuple[str, str]:
    """A local ONNX path for ``spec`` (None -> ``default_url``) and its provenance string.

    URLs go through rtmlib's downloader and cache; paths and fsspec URIs through
    ``dvamn.storage.fetch_to_local``. A cached download is checked against the SHA-256
    recorded at its first use (rtmlib publishes no hash of its ONNX files; the one in its
    zip names is another file's) on every later use. Raises ``PoseWeightsError`` naming
    the flags.
    """
    source = spec or default_url
    if source.startswith(("http://", "https://")):
        from rtmlib.tools.file import download_checkpoint

        try:
            path = download_checkpoint(source)
        except Exception as error:  # network errors come in many types
            raise PoseWeightsError(
                f"cannot download the {what} from {source} ({type(error).__name__}: {error}); "
                f"this machine may be offline: {_FLAG_HINT}"
            ) from error
        if not os.path.isfile(path):
            raise PoseWeightsError(f"the {what} {source} did not give a file: {_FLAG_HINT}")
        try:
            digest = storage.verify_cached_file(path)
        except storage.CachedFileError as error:
            raise PoseWeightsError(f"the {what} from {source}: {error}; or {_FLAG_HINT}") from error
        return path, f"{source} sha256:{digest[:12]}"
    else:
        try:
            path = str(storage.fetch_to_local(source, kind="pose-models"))
        except FileNotFoundError as error:
            raise PoseWeightsError(f"the {what} {source} does not exist: {_FLAG_HINT}") from error
        except Exception as error:
            raise PoseWeightsError(
                f"cannot read the {what} {source} ({type(error).__name__}: {error}): {_FLAG_HINT}"
            ) from error
    if not os.path.isfile(path):
        raise PoseWeightsError(f"the {what} {source} did not give a file ({path}): {_FLAG_HINT}")
    return path, f"{source} sha256:{storage.file_sha256(path)}"


def load_pose_estimator(
    kind: str = "rtmo",
    model: Optional[str] = None,
    detector: Optional[str] = None,
    device: str = "auto",
    mode: str = "balanced",
    max_batch: int = POSE_FRAME_BATCH,
    num_threads: Optional[int] = None,
) -> PoseEstimator:
    """Build the pose estimator for ``kind`` ('rtmo' or 'rtmpose').

    ``model`` (RTMO or RTMPose ONNX) and ``detector`` (YOLOX ONNX, 'rtmpose' only) are a
    local path, an ``s3://``/fsspec URI or a URL; None takes rtmlib's default for
    ``mode``. ``device``: 'auto' (CUDA when ONNX Runtime has it), 'cpu', 'cuda[:N]'.
    Raises ``PoseWeightsError`` (before any frame is processed) when weights are missing.
    """
    defaults = rtmlib_defaults(kind, mode)
    device = resolve_onnx_device(device)
    if kind == "rtmo":
        if detector:
            log.warning("--pose-detector is ignored by the one-stage RTMO model")
        path, provenance = resolve_weights(model, defaults.pose_url, "RTMO pose model")
        return RTMOEstimator(
            path, provenance, device=device, max_batch=max_batch, num_threads=num_threads
        )
    det_path, det_provenance = resolve_weights(
        detector, defaults.detector_url, "YOLOX person detector"
    )
    pose_path, pose_provenance = resolve_weights(model, defaults.pose_url, "RTMPose pose model")
    return TwoStageEstimator(
        det_path,
        pose_path,
        weights=f"det={det_provenance}; pose={pose_provenance}",
        device=device,
        max_batch=max_batch,
        num_threads=num_threads,
    )
