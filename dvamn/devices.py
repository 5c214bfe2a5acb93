"""Where models run: the ``--device`` choices and the one torch-device resolver.

ONNX Runtime (the pose models) checks its own providers (``dvamn.pose.estimators``);
everything on torch (VGGish, DVAMN, the scorer) resolves its device here.
"""

import argparse

DEVICES = ("auto", "cpu", "cuda")


def resolve_torch_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; 'cuda' without one is an error."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA GPU; use 'auto'")
    return device


def wants_gpu(device: str) -> bool:
    """Whether a Ray actor for ``device`` ('auto' or 'cuda') should ask for a GPU: when
    the cluster (when connected; else this machine) has one. A 'cuda' actor on a cluster
    without GPUs then fails in ``resolve_torch_device`` with a message that says so,
    rather than waiting forever for a GPU."""
    if device == "cpu":
        return False
    import ray

    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0) > 0
    import torch

    return torch.cuda.is_available()


def add_device_argument(
    parser: argparse._ActionsContainer,
    flag: str = "--device",
    what: str = "models",
    dest: "str | None" = None,
) -> None:
    """``--device {auto,cpu,cuda}`` (default auto) for the models named by ``what``."""
    kwargs = {"dest": dest} if dest else {}
    parser.add_argument(
        flag,
        choices=DEVICES,
        default="auto",
        help=f"where {what} run: auto = CUDA when present (default: auto)",
        **kwargs,
    )
