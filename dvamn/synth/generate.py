"""``synthesize``: a folder of synthetic dance videos, their true keypoints and a manifest.

Layout of ``out_dir`` (a local path or any fsspec URI such as ``s3://``)::

    dance_0000.mp4, dance_0000.npz, ...     videos and their keypoint files
    broken_<kind>_NN.mp4 (+ .npz)           bad inputs (``broken=M``)
    music/dance_0000.wav, ...               whole tracks (``write_music=True``)
    synth.json                              per video: family, music parameters, style,
                                            framing

Deterministic for a seed: keypoints and audio samples are identical run to run, whatever
the number of worker processes.
"""

import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dvamn import storage
from dvamn.synth.broken import BROKEN_KINDS, make_broken
from dvamn.synth.clip import MUSIC_SAMPLE_RATE_HZ, VideoSpec, make_video, video_seed
from dvamn.synth.families import DEFAULT_FAMILY, FAMILY_NAMES

log = logging.getLogger(__name__)

MANIFEST_NAME = "synth.json"
VFR_EVERY = 8  # videos 1, 9, 17, ... have a variable frame rate

# (what, manifest entry, seconds it took); what is "video" or "broken".
ProgressCallback = Callable[[int, int, str, Dict, float], None]


@dataclass
class SynthResult:
    """What ``synthesize`` wrote: URIs under ``out_dir``."""

    out_dir: str
    manifest: str
    videos: List[str] = field(default_factory=list)
    keypoints: List[str] = field(default_factory=list)
    broken: List[Tuple[str, str]] = field(default_factory=list)  # (uri, kind)
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class _Job:
    what: str  # "video" or "broken"
    spec: VideoSpec
    kind: str = ""


def _run_job(job: _Job, local_dir: str) -> Tuple[_Job, Dict, float]:
    start = time.perf_counter()
    if job.what == "video":
        entry = make_video(job.spec, local_dir)
    else:
        entry = make_broken(job.kind, job.spec.video_id, job.spec, local_dir)
    return job, entry, time.perf_counter() - start


def plan(
    videos: int,
    seconds: float,
    seed: int = 0,
    broken: int = 0,
    track_seconds: Optional[float] = None,
    write_music: bool = False,
    families: Sequence[str] = (DEFAULT_FAMILY,),
) -> List[_Job]:
    """The files of a run, in order: videos then broken files."""
    track_s = max(track_seconds or seconds, seconds)
    assigned = assign_families(videos, families, seed)
    jobs = [
        _Job(
            "video",
            VideoSpec(
                video_id=f"dance_{i:04d}",
                seed=video_seed(seed, i),
                seconds=float(seconds),
                track_seconds=float(track_s),
                variable_frame_rate=i % VFR_EVERY == 1,
                write_music=write_music,
                family=assigned[i],
            ),
        )
        for i in range(videos)
    ]
    for j in range(broken):
        kind = BROKEN_KINDS[j % len(BROKEN_KINDS)]
        spec = VideoSpec(
            video_id=f"broken_{kind}_{j:02d}",
            seed=video_seed(seed, j, broken=True),
            seconds=float(seconds),
            track_seconds=float(seconds),
        )
        jobs.append(_Job("broken", spec, kind))
    return jobs


def assign_families(videos: int, families: Sequence[str], seed: int = 0) -> List[str]:
    """Each video's choreography family: one family for all, or, for several, as equal
    shares as ``videos`` allows in an order shuffled by ``seed``."""
    unknown = [f for f in families if f not in FAMILY_NAMES]
    if not families or unknown:
        raise ValueError(
            f"unknown choreography families {unknown or list(families)}; choose from "
            f"{', '.join(FAMILY_NAMES)}"
        )
    if len(families) == 1:
        return [families[0]] * videos
    order = np.random.default_rng([seed, 3]).permutation(videos)
    return [families[int(k) % len(families)] for k in order]


def synthesize(
    out_dir: str,
    videos: int,
    seconds: float,
    seed: int = 0,
    broken: int = 0,
    *,
    track_seconds: Optional[float] = None,
    write_music: bool = False,
    workers: int = 1,
    progress: Optional[ProgressCallback] = None,
    families: Sequence[str] = (DEFAULT_FAMILY,),
) -> SynthResult:
    """Write ``videos`` dance videos of ``seconds`` s and ``broken`` bad files.

    Args:
        out_dir: local folder or fsspec URI (created; existing files of the same names are
            overwritten).
        track_seconds: length of each music track (>= seconds); each video's soundtrack is
            a ``seconds`` long cut at a random offset (recorded in the manifest).
        write_music: also write each whole track as ``music/<id>.wav`` (16-bit PCM).
        workers: processes writing videos in parallel (1: in this process).
        families: choreography families (``dvamn.synth.families.FAMILY_NAMES``); with several,
            each video gets one (``assign_families``), recorded in its manifest entry.
        progress: called after each file as progress(done, total, what, entry, seconds).

    Returns:
        SynthResult with the URIs written and the elapsed wall time.
    """
    if videos < 0 or broken < 0 or seconds <= 0:
        raise ValueError(
            f"need videos >= 0, broken >= 0 and seconds > 0 (got {videos}, {broken}, {seconds})"
        )
    start = time.perf_counter()
    remote = storage.is_remote(out_dir)
    local_dir = tempfile.mkdtemp(prefix="dvamn-synth-") if remote else out_dir
    os.makedirs(local_dir, exist_ok=True)
    families = tuple(families)
    jobs = plan(videos, seconds, seed, broken, track_seconds, write_music, families)
    entries: Dict[str, Dict] = {}
    try:
        for done, (job, entry, took_s) in enumerate(_run_all(jobs, local_dir, workers), 1):
            entries[job.spec.video_id] = entry
            if progress is not None:
                progress(done, len(jobs), job.what, entry, took_s)
        manifest = {
            "generator": "dvamn synth",
            "seed": seed,
            "seconds": float(seconds),
            "track_seconds": float(max(track_seconds or seconds, seconds)),
            "music_sample_rate_hz": MUSIC_SAMPLE_RATE_HZ,
            "families": list(families),
            "keypoint_format": (
                "npz beside each video: keypoints float32 [T,17,2] pixels (COCO-17 order), "
                "scores float32 [T,17] (0 where the dancer is not visible), fps (frame k at "
                "k/fps s), width, height"
            ),
            "videos": [entries[j.spec.video_id] for j in jobs if j.what == "video"],
            "broken": [entries[j.spec.video_id] for j in jobs if j.what == "broken"],
        }
        with open(os.path.join(local_dir, MANIFEST_NAME), "w") as f:
            json.dump(manifest, f, indent=1)
        if remote:
            _upload(local_dir, out_dir)
    finally:
        if remote:
            shutil.rmtree(local_dir, ignore_errors=True)

    def uri(name: str) -> str:
        return storage.join(out_dir, name) if remote else os.path.join(out_dir, name)

    return SynthResult(
        out_dir=out_dir,
        manifest=uri(MANIFEST_NAME),
        videos=[uri(e["video"]) for e in manifest["videos"]],
        keypoints=[uri(e["keypoints"]) for e in manifest["videos"]],
        broken=[(uri(e["video"]), e["kind"]) for e in manifest["broken"]],
        elapsed_s=time.perf_counter() - start,
    )


def _run_all(jobs: List[_Job], local_dir: str, workers: int):
    """Yield (job, entry, seconds) as jobs finish, in this process or in a pool."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield _run_job(job, local_dir)
        return
    # "spawn": forking a process that may hold Ray or torch threads is unsafe.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
        futures = [pool.submit(_run_job, job, local_dir) for job in jobs]
        for future in as_completed(futures):
            yield future.result()


def _upload(local_dir: str, out_dir: str) -> None:
    for root, _, files in os.walk(local_dir):
        for name in files:
            path = os.path.join(root, name)
            storage.copy_file(path, storage.join(out_dir, os.path.relpath(path, local_dir)))


def load_manifest(out_dir: str) -> Dict:
    """The ``synth.json`` of a synthesised folder (local or URI)."""
    with storage.open_uri(storage.join(out_dir, MANIFEST_NAME), "rb") as f:
        return json.load(f)
