"""The extraction job on Ray Data: videos -> pose + audio features -> Parquet.

    uris -> [PoseStage actors]   decode 10 fps frames + 16 kHz audio, pose model, features
         -> [AudioStage actors]  audio embeddings, batched; write OUT/videos/*.parquet
                                 and OUT/errors/*.parquet
         -> materialised Dataset of the rows (``extract_dataset``)

With ``--pose keypoints`` there is no pose model to keep loaded: the pose step runs as a
Ray task that Ray Data fuses into the audio actors, so one pool does the whole job (no
second pool to start, and the soundtrack never goes through the object store).

Each stage catches failures per video and turns them into error rows (Ray Data would
otherwise abort the whole run, or drop a whole block): every input ends in exactly one of
``OUT/videos`` and ``OUT/errors``. Parts are written as batches finish, so an interrupted
run keeps what it did; a rerun skips videos already in ``OUT/videos`` and retries the
rest, and once it completes, the errors of earlier runs are replaced by its own.

A part appears only complete (``storage.atomic_output``: a temporary name renamed on local
disks and NFS, one upload on object stores), so a job killed mid-write leaves at worst a
hidden ``.part-*.tmp`` file that no reader lists. A part that cannot be read all the same
(damaged later, written by an older version or another tool) is moved to
``OUT/unreadable/`` by the planner, with a warning naming it, and its videos are extracted
again.
"""

import hashlib
import json
import logging
import platform
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dvamn import storage
from dvamn.constants import EMBEDDING_DIM, POSE_FEATURES
from dvamn.parquet_parts import part_files, read_footer, read_part, read_parts, write_part
from dvamn.pipeline.config import ExtractConfig, StageResources
from dvamn.pipeline.video import VideoPoseExtractor, error_row, finish_rows, utc_now
from dvamn.ray_setup import limit_threads
from dvamn.schema import (
    ERROR_SCHEMA,
    ERRORS_DIR,
    MANIFEST_FILE,
    UNREADABLE_DIR,
    VIDEO_SCHEMA,
    VIDEOS_DIR,
    column_sequences,
    rows_to_table,
)

log = logging.getLogger(__name__)


# The table that flows between stages: a video row (or its pose part), the soundtrack
# until it is embedded, and the error of a video that failed.
STAGE_SCHEMA = pa.schema(
    list(VIDEO_SCHEMA)
    + [
        ("waveform", pa.list_(pa.float32())),
        ("status", pa.string()),  # "ok" or "error"
        ("error_stage", pa.string()),
        ("error_message", pa.string()),
        ("error_type", pa.string()),
        # Peak resident memory of the actor that handled the row (the summary's
        # "peak memory per worker").
        ("pose_worker_rss_mb", pa.float32()),
        ("audio_worker_rss_mb", pa.float32()),
    ]
)
_SEQUENCE_WIDTHS = {"pose": POSE_FEATURES, "audio_embedding": EMBEDDING_DIM}


def _blank_row(uri: str, video_id: str) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for field in STAGE_SCHEMA:
        if field.name in _SEQUENCE_WIDTHS:
            row[field.name] = np.zeros((0, _SEQUENCE_WIDTHS[field.name]), np.float32)
        elif pa.types.is_list(field.type):
            row[field.name] = np.zeros(0, np.float32)
        elif pa.types.is_string(field.type):
            row[field.name] = ""
        else:
            row[field.name] = 0
    row.update(uri=uri, video_id=video_id, status="ok")
    return row


def _failed(uri: str, video_id: str, error: BaseException, stage: str) -> dict[str, Any]:
    row = _blank_row(uri, video_id)
    err = error_row(uri, video_id, error, stage)
    row.update(
        status="error",
        error_stage=err["stage"],
        error_message=err["message"],
        error_type=err["error_type"],
    )
    return row


def _table_rows(table: pa.Table) -> list[dict[str, Any]]:
    """STAGE_SCHEMA table -> dict rows with numpy sequences (inverse of rows_to_table)."""
    columns = {}
    for field in STAGE_SCHEMA:
        if field.name in _SEQUENCE_WIDTHS:
            columns[field.name] = column_sequences(table, field.name, _SEQUENCE_WIDTHS[field.name])
        elif pa.types.is_list(field.type):
            columns[field.name] = column_sequences(table, field.name)
        else:
            columns[field.name] = table.column(field.name).to_pylist()
    return [{k: v[i] for k, v in columns.items()} for i in range(table.num_rows)]


class PoseStage:
    """Ray Data actor: loads the pose model once, then turns uris into pose parts."""

    def __init__(self, config: ExtractConfig, resources: Optional[StageResources] = None):
        """``resources``: the CPU share it runs with (default: the pose stage's)."""
        threads = limit_threads((resources or config.pose_stage).num_cpus)
        self.extract = VideoPoseExtractor(config, num_threads=threads)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for uri, video_id in zip(
            batch.column("uri").to_pylist(), batch.column("video_id").to_pylist()
        ):
            started = time.perf_counter()
            try:
                part = self.extract(uri, video_id)
                row = _blank_row(uri, video_id)
                row.update(part)
            except Exception as error:  # noqa: BLE001 - a bad video must not stop the job
                row = _failed(uri, video_id, error, "pose")
            log.debug("%s: pose stage %.2f s", uri, time.perf_counter() - started)
            row["pose_worker_rss_mb"] = peak_rss_mb()
            rows.append(row)
        return rows_to_table(rows, STAGE_SCHEMA)


class AudioStage:
    """Ray Data actor: loads the audio embedding once, embeds a batch of soundtracks,
    writes the batch's Parquet parts (here: a write stage of its own would start worker
    processes of its own) and passes on the VIDEO_SCHEMA rows of the finished videos."""

    def __init__(self, config: ExtractConfig, run_id: str):
        from dvamn.audio import make_audio_embedder

        self.embedder = make_audio_embedder(
            config.audio,
            weights=config.vggish_weights,
            pca=config.vggish_pca,
            device=config.audio_device,
        )
        self.out, self.run_id = config.out, run_id
        limit_threads(config.audio_stage.num_cpus)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = _table_rows(batch)
        pending = [r for r in rows if r["status"] == "ok"]
        finished = {}
        if pending:
            try:
                done = finish_rows(pending, self.embedder)
            except Exception:  # noqa: BLE001 - retry one by one to find the culprit
                done = []
                for row in pending:
                    try:
                        done.extend(finish_rows([row], self.embedder))
                    except Exception as error:  # noqa: BLE001
                        finished[row["uri"]] = _failed(row["uri"], row["video_id"], error, "audio")
            for row in done:
                full = _blank_row(row["uri"], row["video_id"])
                full.update(row)
                finished[row["uri"]] = full
        out = [finished.get(r["uri"], r) if r["status"] == "ok" else r for r in rows]
        rss_mb = peak_rss_mb()
        for row in out:
            row["waveform"] = np.zeros(0, np.float32)  # the soundtrack is not stored
            row["audio_worker_rss_mb"] = rss_mb
        return write_parts(rows_to_table(out, STAGE_SCHEMA), self.out, self.run_id)


# Parquet footer key of a part's statistics (JSON), so that the job's summary reads
# footers instead of running another Ray Data pass over the results.
PART_STATS_KEY = "dvamn.part_stats"


def write_parts(batch: pa.Table, out: str, run_id: str) -> pa.Table:
    """Write a STAGE_SCHEMA batch's video rows and error rows as Parquet parts; returns
    the video rows (VIDEO_SCHEMA).

    The part name is derived from the batch's contents, so a call that Ray retries
    overwrites its own part instead of duplicating rows. Each part's footer carries its
    statistics (PART_STATS_KEY): media seconds and pose frames of a video part, and the
    peak memory of the actors that made the batch.
    """
    digest = hashlib.sha256("\n".join(batch.column("uri").to_pylist()).encode()).hexdigest()[:16]
    ok = batch.filter(pc.equal(batch.column("status"), "ok")).select(VIDEO_SCHEMA.names)
    failed = batch.filter(pc.equal(batch.column("status"), "error"))
    memory = {
        "pose_worker_peak_rss_mb": float(pc.max(batch.column("pose_worker_rss_mb")).as_py() or 0),
        "audio_worker_peak_rss_mb": float(pc.max(batch.column("audio_worker_rss_mb")).as_py() or 0),
    }
    if ok.num_rows:
        stats = {
            "media_s": float(pc.sum(ok.column("duration_s")).as_py()),
            "pose_frames": int(pc.sum(ok.column("num_pose_frames")).as_py()),
            **memory,
        }
        _write_table(
            ok,
            storage.join(out, VIDEOS_DIR, f"part-{run_id}-{digest}.parquet"),
            stats,
        )
    if failed.num_rows:
        errors = pa.table(
            {
                "video_id": failed.column("video_id"),
                "uri": failed.column("uri"),
                "stage": failed.column("error_stage"),
                "message": failed.column("error_message"),
                "error_type": failed.column("error_type"),
                "failed_at": pa.array([utc_now()] * failed.num_rows, pa.string()),
            },
            schema=ERROR_SCHEMA,
        )
        _write_table(
            errors, storage.join(out, ERRORS_DIR, f"part-{run_id}-{digest}.parquet"), memory
        )
    return ok


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes vs KiB


def _write_table(table: pa.Table, uri: str, stats: dict[str, Any]) -> None:
    write_part(table.replace_schema_metadata({PART_STATS_KEY: json.dumps(stats)}), uri)


def read_table(out: str, subdir: str, columns: Optional[list[str]] = None) -> Optional[pa.Table]:
    """All parts of ``OUT/<subdir>`` as one table, or None when there are none."""
    tables = read_parts(storage.join(out, subdir), columns)
    return pa.concat_tables(tables) if tables else None


@dataclass
class ExtractPlan:
    inputs: list[tuple[str, str]]  # (uri, video_id) of every input
    todo: list[tuple[str, str]]  # not yet in OUT/videos
    already_done: int
    stale_error_files: list[str]  # error parts of earlier runs, replaced by this run's


def _video_id(uri: str, root: str) -> str:
    """The input's id; a URI without a file name (``/``) keeps itself as its id, and its
    error row says what is wrong with it."""
    try:
        return storage.relative_id(uri, root)
    except ValueError:
        return uri


def readable_part_uris(out: str, subdir: str) -> dict[str, str]:
    """``uri`` -> ``video_id`` of every row of every part of ``OUT/<subdir>``; a part that
    cannot be read (footer or those columns) is moved to ``OUT/unreadable/<subdir>/`` with a
    warning naming it, so that its videos count as not done and are extracted again."""
    fs, _ = storage.filesystem(out)
    uris: dict[str, str] = {}
    for file in part_files(storage.join(out, subdir)):
        try:
            table = read_part(fs, file, ["uri", "video_id"])
            uris.update(zip(table.column("uri").to_pylist(), table.column("video_id").to_pylist()))
            continue
        except Exception as error:  # noqa: BLE001 - any unreadable part is set aside
            reason = f"{type(error).__name__}: {error}"
        target = storage.join(out, UNREADABLE_DIR, subdir, file.rstrip("/").rsplit("/", 1)[-1])
        _, target_path = storage.filesystem(target)
        fs.makedirs(target_path.rsplit("/", 1)[0], exist_ok=True)
        fs.mv(file, target_path)
        log.warning(
            "extract: cannot read the part %s (%s); moved it to %s, its videos are extracted again",
            file,
            reason,
            target,
        )
    return uris


def plan(config: ExtractConfig) -> ExtractPlan:
    uris = storage.list_inputs(config.input)
    if config.limit is not None:
        uris = uris[: config.limit]
    inputs = [(uri, _video_id(uri, config.input)) for uri in uris]
    ids = [video_id for _, video_id in inputs]
    if len(set(ids)) != len(ids):  # same stem in two folders: fall back to full uris
        inputs = [(uri, uri) for uri in uris]
    done = readable_part_uris(config.out, VIDEOS_DIR)
    readable_part_uris(config.out, ERRORS_DIR)  # sets aside what the summary could not read
    todo = [(uri, vid) for uri, vid in inputs if uri not in done]
    _refuse_id_clashes(todo, done, config.out)
    return ExtractPlan(
        inputs, todo, len(inputs) - len(todo), part_files(storage.join(config.out, ERRORS_DIR))
    )


def _refuse_id_clashes(todo: list[tuple[str, str]], done: dict[str, str], out: str) -> None:
    """An input whose id OUT already holds from another uri (the input folder moved or
    renamed, or another dataset's OUT) would be extracted beside it: two rows of one video,
    which training would count twice and could put on both sides of its split."""
    done_by_id = {vid: uri for uri, vid in done.items()}
    clashes = [(uri, vid) for uri, vid in todo if vid in done_by_id]
    if clashes:
        uri, vid = clashes[0]
        raise ValueError(
            f"{out} already holds video {vid!r} from {done_by_id[vid]}, and the input {uri} "
            f"has the same id ({len(clashes)} such input(s)): extract into a new --out, or, "
            "if the inputs only moved, remove the old parts from OUT/videos first"
        )


def check_weights(config: ExtractConfig) -> None:
    """Fail before any work when the pose or audio weights cannot be had."""
    from dvamn.audio import check_audio_weights

    check_audio_weights(config.audio, config.vggish_weights, config.vggish_pca)
    if config.pose != "keypoints":
        VideoPoseExtractor(config)  # resolves and loads the ONNX files once


def _pool(resources: StageResources):
    """The stage's actor pool. A killed actor is restarted and its batch retried: Ray Data
    gives pool actors ``max_restarts=-1`` and ``max_task_retries=-1`` unless told
    otherwise, and a retried batch rewrites its own part (``write_parts``); tested by
    killing one mid-job (tests/pipeline/test_extract_crash.py)."""
    import ray.data

    return ray.data.ActorPoolStrategy(
        min_size=resources.min_actors, max_size=max(resources.min_actors, resources.max_actors)
    )


def pose_from_keypoint_files(batch: pa.Table, config: ExtractConfig) -> pa.Table:
    """The pose stage as a Ray task, for ``--pose keypoints`` (no model to keep loaded);
    it runs inside the audio actors, so with their CPU share."""
    return PoseStage(config, config.audio_stage)(batch)


def _stage_args(resources: StageResources) -> dict[str, Any]:
    return dict(
        batch_size=resources.videos_per_batch,
        batch_format="pyarrow",
        num_cpus=resources.num_cpus,
        num_gpus=resources.num_gpus or None,
    )


def build_dataset(config: ExtractConfig, todo: list[tuple[str, str]], run_id: str):
    """The lazy Ray Dataset of the job: it writes every input in ``todo`` to OUT/videos
    or OUT/errors, and yields the VIDEO_SCHEMA rows of the videos that succeeded."""
    import ray.data

    items = [{"uri": uri, "video_id": video_id} for uri, video_id in todo]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    audio = config.audio_stage
    if config.pose == "keypoints":
        # A task with the audio actors' resources: Ray Data fuses it into them (task ->
        # actor fusion), so the fast keypoint path runs as one pool with no hand-off.
        # Not tasks all the way: a task waits on Ray Data's dispatch before it starts
        # (about 0.2 s each on 2 cores), while an actor has its next batches queued.
        ds = ds.map_batches(
            pose_from_keypoint_files, fn_kwargs={"config": config}, **_stage_args(audio)
        )
    else:
        ds = ds.map_batches(
            PoseStage,
            fn_constructor_kwargs={"config": config},
            compute=_pool(config.pose_stage),
            **_stage_args(config.pose_stage),
        )
    return ds.map_batches(
        AudioStage,
        fn_constructor_kwargs={"config": config, "run_id": run_id},
        compute=_pool(audio),
        **_stage_args(audio),
    )


@dataclass
class ExtractSummary:
    inputs: int
    already_done: int
    done: int
    failed: int
    media_hours: float
    pose_frames: int
    wall_s: float
    videos_total: int
    errors_total: int
    out: str
    pose_worker_peak_rss_mb: float = 0.0
    audio_worker_peak_rss_mb: float = 0.0

    @property
    def frames_per_s(self) -> float:
        return self.pose_frames / self.wall_s if self.wall_s else 0.0

    def lines(self) -> list[str]:
        return [
            f"inputs           {self.inputs} ({self.already_done} already done, skipped)",
            f"this run         {self.done} done, {self.failed} failed in {self.wall_s:.1f} s",
            f"media            {self.media_hours:.3f} h ({self.media_hours * 3600 / max(self.wall_s, 1e-9):.1f}x real time)",
            f"pose frames      {self.pose_frames} ({self.frames_per_s:.1f} frames/s)",
            f"worker memory    pose {self.pose_worker_peak_rss_mb:.0f} MiB, "
            f"audio {self.audio_worker_peak_rss_mb:.0f} MiB (peak per actor)",
            f"output           {self.videos_total} videos in {storage.join(self.out, VIDEOS_DIR)}",
            f"                 {self.errors_total} errors in {storage.join(self.out, ERRORS_DIR)}",
        ]


def extract_dataset(config: ExtractConfig, write_manifest: bool = True):
    """Run the job; returns ``(dataset, summary)``.

    ``dataset`` holds the VIDEO_SCHEMA rows extracted by this run, materialised in Ray's
    object store, so training can consume them without reading OUT back.
    """
    from dvamn.ray_setup import check_shared_output, ensure_ray

    check_weights(config)
    job = plan(config)
    ensure_ray()
    check_shared_output(config.out, "--out")
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    log.info(
        "%d inputs, %d already in %s, %d to extract",
        len(job.inputs),
        job.already_done,
        config.out,
        len(job.todo),
    )
    started = time.perf_counter()
    dataset = None
    if job.todo:
        from dvamn import console

        # A bar over the videos as their blocks complete (failed videos are error rows,
        # not rows of the dataset: the summary counts them).
        dataset = console.materialize(
            build_dataset(config, job.todo, run_id), len(job.todo), "   videos", "video"
        )
    wall_s = time.perf_counter() - started
    videos = _footers(config.out, VIDEOS_DIR)
    errors = _footers(config.out, ERRORS_DIR)
    this_run = f"part-{run_id}-"
    new_videos = [f for f in videos if this_run in f.path]
    new_errors = [f for f in errors if this_run in f.path]
    done = sum(f.num_rows for f in new_videos)
    failed = sum(f.num_rows for f in new_errors)
    if done + failed == len(job.todo):
        # Every retried input is in this run's output: earlier errors are superseded.
        fs, _ = storage.filesystem(config.out)
        for stale in job.stale_error_files:
            fs.rm(stale)
        stale = set(job.stale_error_files)
        errors = [f for f in errors if f.path not in stale]

    def peak(key: str) -> float:
        return max((f.stats.get(key, 0.0) for f in new_videos + new_errors), default=0.0)

    summary = ExtractSummary(
        inputs=len(job.inputs),
        already_done=job.already_done,
        done=done,
        failed=failed,
        media_hours=sum(f.stats.get("media_s", 0.0) for f in new_videos) / 3600,
        pose_frames=sum(f.stats.get("pose_frames", 0) for f in new_videos),
        wall_s=wall_s,
        videos_total=sum(f.num_rows for f in videos),
        errors_total=sum(f.num_rows for f in errors),
        out=config.out,
        pose_worker_peak_rss_mb=peak("pose_worker_peak_rss_mb"),
        audio_worker_peak_rss_mb=peak("audio_worker_peak_rss_mb"),
    )
    if write_manifest:
        _write_manifest(config, summary)
    return dataset, summary


def run_extract(config: ExtractConfig) -> ExtractSummary:
    """Run the job for its outputs in OUT (the CLI's entry point)."""
    _, summary = extract_dataset(config)
    return summary


@dataclass
class PartFooter:
    path: str
    num_rows: int
    stats: dict[str, Any]  # PART_STATS_KEY of the part


def _footers(out: str, subdir: str) -> list[PartFooter]:
    """Row count and statistics of every part in ``OUT/<subdir>``, from footers only."""
    fs, _ = storage.filesystem(out)
    footers = []
    for file in part_files(storage.join(out, subdir)):
        metadata = read_footer(fs, file)
        stats = (metadata.metadata or {}).get(PART_STATS_KEY.encode())
        footers.append(
            PartFooter(file, metadata.num_rows, json.loads(stats) if stats else {})
        )  # {}: a part another tool wrote
    return footers


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for package in (
        "dvamn",
        "ray",
        "torch",
        "onnxruntime",
        "onnxruntime-gpu",
        "rtmlib",
        "torchvggish",
        "av",
        "pyarrow",
        "numpy",
    ):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return out


def _write_manifest(config: ExtractConfig, summary: ExtractSummary) -> None:
    manifest = {
        "updated_at": utc_now(),
        "input": config.input,
        "counts": {
            "inputs": summary.inputs,
            "videos": summary.videos_total,
            "errors": summary.errors_total,
            "this_run_done": summary.done,
            "this_run_failed": summary.failed,
            "this_run_skipped": summary.already_done,
        },
        "media_hours_this_run": summary.media_hours,
        "pose_frames_per_s": summary.frames_per_s,
        "wall_s": summary.wall_s,
        "options": config.to_dict(),
        "versions": versions(),
    }
    fs, path = storage.filesystem(storage.join(config.out, MANIFEST_FILE))
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as f:
        json.dump(manifest, f, indent=2)
