"""Choosing an audio embedding: the factory, the early weights check and the shared CLI flags.

``dvamn extract`` and ``dvamn catalog`` take ``--audio``, ``--vggish-weights``,
``--vggish-pca`` and a VGGish device flag, all added by ``add_audio_arguments``, so that
the flags named in WeightsUnavailableError's message are the same everywhere. The service
embeds no audio (its catalog holds the embeddings).
"""

import argparse
from typing import Optional

from dvamn.audio.base import AUDIO_KINDS, AudioEmbedder
from dvamn.devices import add_device_argument


def _check_kind(kind: str) -> None:
    if kind not in AUDIO_KINDS:
        raise ValueError(
            f"unknown audio embedding {kind!r}: choose one of {', '.join(AUDIO_KINDS)}"
        )


def make_audio_embedder(
    kind: str,
    weights: Optional[str] = None,
    pca: Optional[str] = None,
    device: str = "auto",
    batch_examples: Optional[int] = None,
) -> AudioEmbedder:
    """The embedder for ``kind`` ("vggish", "vggish-raw" or "logmel").

    weights / pca: VGGish state dict and PCA parameters (None: torchvggish's release URLs,
    else a local path or s3:// / fsspec URI); ignored by "logmel" (and pca by "vggish-raw").
    Raises WeightsUnavailableError when VGGish files cannot be had.
    """
    _check_kind(kind)
    if kind == "logmel":
        from dvamn.audio.logmel import LogMelEmbedder

        return LogMelEmbedder()
    from dvamn.audio.vggish import load_vggish

    return load_vggish(
        weights, pca, postprocess=kind == "vggish", device=device, batch_examples=batch_examples
    )


def check_audio_weights(kind: str, weights: Optional[str] = None, pca: Optional[str] = None) -> str:
    """Resolve and load (on CPU, no network built) the files ``kind`` needs, so that a job
    fails before any work. Returns the provenance string the embedder will report ("" for
    logmel); raises WeightsUnavailableError naming the flags that fix it."""
    _check_kind(kind)
    if kind == "logmel":
        return ""
    from dvamn.audio.vggish import load_vggish_files

    files = load_vggish_files(weights, pca, postprocess=kind == "vggish")
    if kind == "vggish":
        return f"{files.weights_provenance}; pca {files.pca_provenance}"
    return files.weights_provenance


def add_audio_arguments(
    parser: argparse.ArgumentParser,
    default_kind: str = "vggish",
    kind_note: str = "",
    device_flag: str = "--audio-device",
) -> None:
    """Add --audio, --vggish-weights, --vggish-pca and the VGGish device flag
    (``device_flag``, stored as ``audio_device``) to a subcommand; ``kind_note`` is added
    to --audio's help."""
    group = parser.add_argument_group("audio embedding")
    group.add_argument(
        "--audio",
        choices=AUDIO_KINDS,
        default=default_kind,
        help=(
            "vggish: VGGish + PCA + 8-bit (0..255, the paper's targets); vggish-raw: the "
            "128-d VGGish embedding before PCA; logmel: weight-free log-mel statistics "
            f"(offline){kind_note} (default: {default_kind})"
        ),
    )
    group.add_argument(
        "--vggish-weights",
        metavar="PATH|s3://...",
        default=None,
        help="VGGish state dict in torchvggish's format (default: torchvggish's release, "
        "downloaded once into torch's hub cache)",
    )
    group.add_argument(
        "--vggish-pca",
        metavar="PATH|s3://...",
        default=None,
        help="VGGish PCA parameters (pca_eigen_vectors, pca_means) in torchvggish's .pth "
        "format or Google's .npz (default: torchvggish's release)",
    )
    add_device_argument(group, flag=device_flag, what="VGGish", dest="audio_device")


def audio_embedder_from_args(args: argparse.Namespace) -> AudioEmbedder:
    """make_audio_embedder from the flags of ``add_audio_arguments``."""
    return make_audio_embedder(
        args.audio, args.vggish_weights, args.vggish_pca, device=args.audio_device
    )
