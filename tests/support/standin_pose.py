"""Small stand-in pose networks exported to ONNX with rtmlib's exact model contracts.

They let tests run the real rtmlib path (``load_pose_estimator(..., model=<path>)``, the
same code a user's downloaded models take) without internet. Each is a deterministic
function of the image: it finds the "person" as the weighted centre and spread of the
pixels that differ from the image's mean colour (the letterbox fill 114 or the black
border of a crop excluded), and places a standing COCO-17 skeleton in that box, nudged
by pooled image features. Contracts (checked against rtmlib 0.0.16's source):

- RTMO: input ``input`` float32 [B, 3, 640, 640] BGR 0..255 (letterboxed top-left, fill
  114, no mean/std); outputs ``dets`` [B, N, 5] (x1, y1, x2, y2, score in input pixels)
  and ``keypoints`` [B, N, 17, 3] (x, y, score).
- YOLOX (with NMS in the graph, like rtmlib's zips): input ``input`` [B, 3, 640, 640] BGR
  0..255; outputs ``dets`` [B, N, 5] and ``labels`` int64 [B, N].
- RTMPose (SimCC): input ``input`` [B, 3, 256, 192] (h, w; rtmlib's size (w, h) =
  (192, 256)), normalised with mean (123.675, 116.28, 103.53), std (58.395, 57.12,
  57.375); outputs ``simcc_x`` [B, 17, 384] and ``simcc_y`` [B, 17, 512] (split ratio 2).

A blank picture has nobody (every score 0). RTMO gives N = 3 candidates: the person (score 0.95), a shifted duplicate (0.8, removed
by rtmlib's NMS) and a faint box (0.1, below every threshold); YOLOX, whose real graphs
contain NMS, gives the person and the faint box.
The batch dimension is dynamic.
"""

import os
from typing import Dict, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NUM_JOINTS = 17
# A standing person in a unit box (x right, y down), COCO-17 order.
TEMPLATE = [
    (0.50, 0.08), (0.47, 0.06), (0.53, 0.06), (0.44, 0.08), (0.56, 0.08),  # nose, eyes, ears
    (0.38, 0.22), (0.62, 0.22), (0.32, 0.38), (0.68, 0.38), (0.30, 0.52), (0.70, 0.52),  # arms
    (0.42, 0.52), (0.58, 0.52), (0.42, 0.74), (0.58, 0.74), (0.42, 0.95), (0.58, 0.95),  # legs
]  # fmt: skip
RTMPOSE_MEAN = (123.675, 116.28, 103.53)
RTMPOSE_STD = (58.395, 57.12, 57.375)
SIMCC_SPLIT_RATIO = 2.0


class PersonFinder(nn.Module):
    """Image [B, 3, H, W] (BGR 0..255) -> person box [B, 4] xyxy, keypoints [B, 17, 2]
    and presence [B, 1] (0 for a blank picture: nothing differs from its mean colour).

    ``ignore_value`` marks padding pixels (all three channels equal to it) that are not
    part of the picture.
    """

    def __init__(self, height: int, width: int, ignore_value: float, seed: int = 0):
        super().__init__()
        self.ignore_value = ignore_value
        self.pool = (height // 4, width // 4)
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("xs", torch.arange(width, dtype=torch.float32).view(1, 1, 1, -1))
        self.register_buffer("ys", torch.arange(height, dtype=torch.float32).view(1, 1, -1, 1))
        self.register_buffer("template", torch.tensor(TEMPLATE, dtype=torch.float32))
        self.register_buffer("mix", torch.randn(48, NUM_JOINTS * 2, generator=generator) * 0.5)

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        valid = ((image - self.ignore_value).abs().sum(1, keepdim=True) > 0.5).float()  # (B,1,H,W)
        count = valid.sum((2, 3), keepdim=True).clamp(min=1.0)
        mean = (image * valid).sum((2, 3), keepdim=True) / count  # (B,3,1,1)
        deviation = (image - mean).abs().sum(1, keepdim=True)  # (B,1,H,W)
        # Foreground: pixels far from the mean colour (over half the largest deviation),
        # plus a trace of every valid pixel so that a blank image still gives a
        # (whole-picture) person instead of a division by zero.
        largest = (deviation * valid).amax((2, 3), keepdim=True)  # (B,1,1,1)
        threshold = 0.5 * largest
        presence = (largest.flatten(1) / 30.0).clamp(0.0, 1.0)  # (B,1)
        weight = (F.relu(deviation - threshold) + 1e-3) * valid
        total = weight.sum((2, 3)).clamp(min=1e-6)  # (B,1)
        cx = (weight * self.xs).sum((2, 3)) / total
        cy = (weight * self.ys).sum((2, 3)) / total
        sx = ((weight * (self.xs - cx[..., None, None]) ** 2).sum((2, 3)) / total).sqrt()
        sy = ((weight * (self.ys - cy[..., None, None]) ** 2).sum((2, 3)) / total).sqrt()
        half_w = (2.0 * sx).clamp(min=8.0)
        half_h = (2.0 * sy).clamp(min=8.0)
        box = torch.cat([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=1)  # (B,4)

        pooled = F.avg_pool2d(image / 255.0, self.pool).flatten(1)  # (B,48)
        nudge = 0.03 * torch.tanh(pooled @ self.mix).view(-1, NUM_JOINTS, 2)
        unit = self.template.unsqueeze(0) + nudge  # (B,17,2) in the unit box
        size = torch.cat([2.0 * half_w, 2.0 * half_h], dim=1).unsqueeze(1)  # (B,1,2)
        keypoints = box[:, None, :2] + unit * size
        return box, keypoints, presence


def _candidates(box: torch.Tensor, presence: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The person, a shifted duplicate (NMS removes it) and a faint box: [B,3,4], [B,3]."""
    width = box[:, 2:3] - box[:, 0:1]
    shift = torch.cat([0.05 * width, torch.zeros_like(width)] * 2, dim=1)
    faint = box * 0.5
    boxes = torch.stack([box, box + shift, faint], dim=1)
    scores = torch.tensor([0.95, 0.8, 0.1], dtype=box.dtype).unsqueeze(0) * presence
    return boxes, scores


class RTMOStandIn(nn.Module):
    def __init__(self):
        super().__init__()
        self.finder = PersonFinder(640, 640, ignore_value=114.0)

    def forward(self, image: torch.Tensor):
        box, keypoints, presence = self.finder(image)
        boxes, scores = _candidates(box, presence)  # (B,3,4), (B,3)
        dets = torch.cat([boxes, scores.unsqueeze(-1)], dim=-1)  # (B,3,5)
        offset = (boxes[:, :, :2] - box[:, None, :2]).unsqueeze(2)  # (B,3,1,2)
        points = keypoints.unsqueeze(1) + offset  # (B,3,17,2)
        joint_scores = scores[:, :, None, None].expand(-1, -1, NUM_JOINTS, 1) * 0.95
        return dets, torch.cat([points, joint_scores], dim=-1)  # (B,3,17,3)


class YOLOXStandIn(nn.Module):
    def __init__(self):
        super().__init__()
        self.finder = PersonFinder(640, 640, ignore_value=114.0, seed=1)

    def forward(self, image: torch.Tensor):
        box, _, presence = self.finder(image)
        boxes, scores = _candidates(box, presence)
        # NMS is inside real YOLOX graphs: no duplicate, only the person and the faint box.
        dets = torch.cat([boxes, scores.unsqueeze(-1)], dim=-1)[:, 0::2]  # (B,2,5)
        labels = torch.zeros(dets.shape[:2], dtype=torch.int64)  # every box is a person
        return dets, labels


class RTMPoseStandIn(nn.Module):
    """SimCC heads: a Gaussian peak (height 1) at each joint of the person in the crop."""

    def __init__(self, input_hw: Tuple[int, int] = (256, 192), sigma_px: float = 2.0):
        super().__init__()
        height, width = input_hw
        # warpAffine fills the outside of the crop with 0 (before normalisation).
        self.finder = PersonFinder(height, width, ignore_value=0.0, seed=2)
        self.sigma = sigma_px
        self.register_buffer("mean", torch.tensor(RTMPOSE_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(RTMPOSE_STD).view(1, 3, 1, 1))
        bins_x = torch.arange(int(width * SIMCC_SPLIT_RATIO), dtype=torch.float32)
        bins_y = torch.arange(int(height * SIMCC_SPLIT_RATIO), dtype=torch.float32)
        self.register_buffer("bins_x", bins_x / SIMCC_SPLIT_RATIO)
        self.register_buffer("bins_y", bins_y / SIMCC_SPLIT_RATIO)

    def forward(self, image: torch.Tensor):
        pixels = image * self.std + self.mean  # back to BGR 0..255
        _, keypoints, _ = self.finder(pixels)  # (B,17,2) crop pixels
        dx = self.bins_x.view(1, 1, -1) - keypoints[..., 0:1]
        dy = self.bins_y.view(1, 1, -1) - keypoints[..., 1:2]
        simcc_x = torch.exp(-(dx**2) / (2 * self.sigma**2))  # (B,17,2W)
        simcc_y = torch.exp(-(dy**2) / (2 * self.sigma**2))  # (B,17,2H)
        return simcc_x, simcc_y


class ColourJointRTMO(nn.Module):
    """RTMO contract; finds each joint of the synthetic dancer by its colour.

    ``dvamn.synth`` draws joint j as a filled circle in ``JOINT_COLORS_BGR[j]``. Per pixel
    (at half resolution: H.264's chroma is half resolution anyway) the chroma (colour
    minus its grey level) is compared with each joint's; a Gaussian of the distance,
    with a floor cut off, weights a soft-argmax that gives the joint's position, and the
    best match is its score. One candidate per image: the box around the joints.
    """

    def __init__(self, joint_colors_bgr, sigma: float = 20.0, floor: float = 0.1):
        super().__init__()
        colors = torch.tensor(joint_colors_bgr, dtype=torch.float32)  # (17,3)
        chroma = colors - colors.mean(dim=1, keepdim=True)
        # |x - t|^2 = |x|^2 - 2 x.t + |t|^2: the middle term is a 1x1 convolution.
        self.register_buffer("targets", chroma.view(NUM_JOINTS, 3, 1, 1))
        self.register_buffer("target_norms", (chroma**2).sum(1).view(1, NUM_JOINTS, 1, 1))
        self.sigma, self.floor = sigma, floor
        half = 320
        self.register_buffer(
            "xs", (torch.arange(half, dtype=torch.float32) * 2 + 0.5).view(1, 1, 1, -1)
        )
        self.register_buffer(
            "ys", (torch.arange(half, dtype=torch.float32) * 2 + 0.5).view(1, 1, -1, 1)
        )

    def forward(self, image: torch.Tensor):
        small = F.avg_pool2d(image, 2)  # (B,3,320,320)
        chroma = small - small.mean(dim=1, keepdim=True)
        dot = F.conv2d(chroma, self.targets)  # (B,17,320,320)
        distance2 = (chroma**2).sum(1, keepdim=True) - 2.0 * dot + self.target_norms
        weight = F.relu(torch.exp(-distance2 / (2.0 * self.sigma**2)) - self.floor)
        total = weight.sum((2, 3))  # (B,17)
        sum_x = (weight * self.xs).sum((2, 3))
        sum_y = (weight * self.ys).sum((2, 3))
        # A joint not found (too small, washed out by compression, hidden) goes to the
        # centre of the joints that were, instead of to 0 / 0.
        all_total = total.sum(1, keepdim=True).clamp(min=1e-6)
        centre_x, centre_y = (
            sum_x.sum(1, keepdim=True) / all_total,
            sum_y.sum(1, keepdim=True) / all_total,
        )
        x = (sum_x + 1e-3 * centre_x) / (total + 1e-3)
        y = (sum_y + 1e-3 * centre_y) / (total + 1e-3)
        score = weight.amax((2, 3)) / (1.0 - self.floor)  # (B,17) in 0..1
        keypoints = torch.stack([x, y, score], dim=-1).unsqueeze(1)  # (B,1,17,3)
        low = torch.stack([x.amin(1), y.amin(1)], dim=1)
        high = torch.stack([x.amax(1), y.amax(1)], dim=1)
        pad = 0.1 * (high - low) + 4.0
        # The small face joints wash out in low-resolution H.264: the person's score is
        # the mean of the 10 best joints.
        person = score.topk(10, dim=1).values.mean(dim=1, keepdim=True)  # (B,1)
        dets = torch.cat([low - pad, high + pad, person], dim=1).unsqueeze(1)  # (B,1,5)
        return dets, keypoints


def _export(
    module: nn.Module, path: str, input_hw: Tuple[int, int], outputs, dynamic_batch: bool
) -> str:
    module.eval()
    example = torch.rand(2 if dynamic_batch else 1, 3, *input_hw) * 255.0
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    dynamic = {name: {0: "batch"} for name in ("input", *outputs)} if dynamic_batch else None
    with torch.no_grad():
        torch.onnx.export(
            module,
            (example,),
            path,
            input_names=["input"],
            output_names=list(outputs),
            dynamic_axes=dynamic,
            opset_version=17,
            dynamo=False,  # the TorchScript exporter needs no onnxscript
        )
    return path


def export_rtmo_standin(path: str, dynamic_batch: bool = True) -> str:
    """RTMO contract (see the module docstring); returns ``path``. ``dynamic_batch=False``
    fixes the batch dimension to 1, as some exported models do."""
    return _export(RTMOStandIn(), path, (640, 640), ("dets", "keypoints"), dynamic_batch)


def export_yolox_standin(path: str, dynamic_batch: bool = True) -> str:
    """YOLOX-with-NMS contract (see the module docstring); returns ``path``."""
    return _export(YOLOXStandIn(), path, (640, 640), ("dets", "labels"), dynamic_batch)


def export_rtmpose_standin(
    path: str, input_hw: Tuple[int, int] = (256, 192), dynamic_batch: bool = True
) -> str:
    """RTMPose SimCC contract (see the module docstring); returns ``path``."""
    return _export(RTMPoseStandIn(input_hw), path, input_hw, ("simcc_x", "simcc_y"), dynamic_batch)


def export_rtmo_colour_standin(path: str) -> str:
    """RTMO contract, finding the joints of ``dvamn.synth``'s dancer by colour, so that
    ``--pose rtmo --pose-model PATH`` gives real poses on synthetic videos."""
    from dvamn.synth.dancer import JOINT_COLORS_BGR

    return _export(ColourJointRTMO(JOINT_COLORS_BGR), path, (640, 640), ("dets", "keypoints"), True)


def export_all(directory: str) -> Dict[str, str]:
    """The three stand-ins in ``directory``: {'rtmo', 'yolox', 'rtmpose'} -> path.
    Use with ``--pose rtmo --pose-model PATH`` or ``--pose rtmpose --pose-model
    PATH --pose-detector PATH``. About 0.5 s."""
    return {
        "rtmo": export_rtmo_standin(os.path.join(directory, "rtmo-standin.onnx")),
        "yolox": export_yolox_standin(os.path.join(directory, "yolox-standin.onnx")),
        "rtmpose": export_rtmpose_standin(os.path.join(directory, "rtmpose-standin.onnx")),
    }


def person_frame(
    height: int = 360, width: int = 640, box: Tuple[int, int, int, int] = (260, 60, 380, 330)
) -> np.ndarray:
    """A uint8 BGR frame: grey background, one dark figure filling ``box`` (x1, y1, x2, y2)."""
    frame = np.full((height, width, 3), 200, np.uint8)
    x1, y1, x2, y2 = box
    frame[y1:y2, x1:x2] = (40, 60, 90)
    return frame
