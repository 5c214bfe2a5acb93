"""`dvamn demo`: the whole product, offline, on this machine's cores.

synth -> extract (Ray Data) -> train (Ray Train, 2 workers) -> catalog of the held-out
soundtracks -> the matching service (Ray Serve) -> every held-out video sent as a silent
query -> Recall@1/5/10 against chance, a report with curves and a similarity picture.

Each stage reuses what an earlier run left in the work dir; the Ray instance and the
service are shut down when the demo ends, fails or is interrupted.
"""

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

from dvamn import console
from dvamn.console import say
from dvamn.training.config import DEFAULT_ONSET_HEAD

log = logging.getLogger(__name__)

SEED = 7
APP_NAME = "dvamn-demo"


@dataclass
class DemoPlan:
    """Sizes of one demo; the defaults take 4 to 8 minutes on 2 cores (by machine), --quick half."""

    workdir: str
    videos: int = 120
    seconds: float = 24.0
    extra_track_s: float = 12.0  # catalog tracks are longer than the videos cut from them
    # 8, not 12, since the contrastive term and the onset head (1.5x the time an epoch)
    # came in: the same demo time, and R@1 0.9 from the third epoch on (README).
    epochs: int = 8
    # A smaller network than the paper's (flags of `dvamn train`), and a higher learning
    # rate, so that it learns in minutes on 2 CPU cores (docs/training.md compares them).
    widths: tuple = (32, 64, 128)
    gru_hidden: int = 128
    post_gru_widths: tuple = (128, 64)
    fc_width: int = 64
    lr: float = 1e-3
    batch_size: int = 64  # per worker, the paper's
    val_fraction: float = 0.25
    stride: int = 10
    # Also predict the music's onsets, for the rhythm term the service then scores with
    # (`dvamn train`'s default too; README, "Quality on synthetic data").
    onset_head: bool = DEFAULT_ONSET_HEAD
    workers: int = 2
    port: int = 0  # 0: a free port
    keep_serving: bool = False  # after the report, serve the page until Ctrl-C
    pose_model: Optional[str] = None  # RTMO ONNX for the service's video uploads

    @classmethod
    def quick(cls, workdir: str) -> "DemoPlan":
        # Few videos give few windows: smaller batches give the optimiser enough steps.
        return cls(
            workdir,
            videos=64,
            seconds=16.0,
            extra_track_s=6.0,
            epochs=6,
            val_fraction=0.3,
            batch_size=16,
        )

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole product offline on this machine (start here)",
        description=(
            "Synthesise dance videos with their music, extract features with Ray Data, train "
            "DVAMN with Ray Train on 2 workers, build a catalog of the held-out soundtracks, "
            "start the Ray Serve matching service and send every held-out video to it as a "
            "silent query; print the matches and Recall@1/5/10 against chance, and write a "
            "report (report.md, report.json, PNG pictures) into the work dir. A second run "
            "reuses what the first one finished."
        ),
    )
    parser.add_argument(
        "--workdir", default="dvamn-demo", help="where everything goes (default ./dvamn-demo)"
    )
    parser.add_argument("--videos", type=int, help="synthetic videos (default 120; --quick 64)")
    parser.add_argument("--epochs", type=int, help="training epochs (default 8; --quick 6)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smaller demo, about half the default's 4 to 8 minutes on 2 cores",
    )
    parser.add_argument("--port", type=int, default=0, help="service port (default: a free one)")
    parser.add_argument(
        "--keep-serving",
        action="store_true",
        help="after the report, keep the service running and print the web page's URL "
        "(drop a dance video there and hear the suggestions); Ctrl-C stops it",
    )
    parser.add_argument(
        "--pose-model",
        metavar="PATH",
        help="an RTMO ONNX file for the service's video uploads (the page), for machines "
        "that cannot download rtmlib's; the demo's own queries are unchanged",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    plan = DemoPlan.quick(args.workdir) if args.quick else DemoPlan(args.workdir)
    if args.videos:
        plan.videos = args.videos
    if args.epochs:
        plan.epochs = args.epochs
    plan.port = args.port
    plan.keep_serving = args.keep_serving
    plan.pose_model = args.pose_model
    try:
        report = run_demo(plan)
    except KeyboardInterrupt:
        print("\ninterrupted: the Ray instance and the service are stopped", file=sys.stderr)
        return 130
    print(f"\nreport: {os.path.join(plan.workdir, 'report.md')}")
    return 0 if report["r_at_1"] > report["chance_r_at_1"] else 1


def _sigterm_as_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def run_demo(plan: DemoPlan) -> dict[str, Any]:
    """Run every stage; returns the report's numbers (also written to report.json)."""

    from dvamn.ray_setup import ensure_ray, stop_service

    os.makedirs(plan.workdir, exist_ok=True)
    started = time.perf_counter()
    own_ray = False
    previous = None
    try:
        own_ray = ensure_ray()
        # After ray.init, which installs a SIGTERM handler of its own (exit status 15).
        previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
        timings: dict[str, float] = {}
        synth = _stage("1/6 synthesise dance videos", timings, _synthesise, plan)
        audio_kind, pose_kind = _choose_models()
        _stage("2/6 extract features (Ray Data)", timings, _extract, plan, audio_kind)
        trained = _stage("3/6 train DVAMN (Ray Train, 2 workers)", timings, _train, plan)
        held_out = _held_out(plan, synth)
        catalog = _stage(
            "4/6 catalog of the held-out soundtracks", timings, _catalog, plan, held_out, audio_kind
        )
        answers, service = _stage(
            "5/6 match the held-out videos through the service (Ray Serve)",
            timings,
            _serve_and_query,
            plan,
            trained,
            catalog,
            held_out,
            pose_kind,
        )
        report = _stage(
            "6/6 report",
            timings,
            _report,
            plan,
            synth,
            trained,
            held_out,
            answers,
            service,
            audio_kind,
            pose_kind,
            timings,
        )
        say(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
        if plan.keep_serving:
            _keep_serving(service["url"])
        return report
    finally:
        stop_service(APP_NAME, own_ray)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _keep_serving(url: str) -> None:
    """Serve until Ctrl-C or SIGTERM (a normal end of a --keep-serving demo)."""
    say(f"\nthe web page: {url}/  (the API: {url}/docs); the service runs until Ctrl-C")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        say("stopping the service")


def _stage(title: str, timings: dict, fn, *args):
    """``fn(*args)`` as one of the demo's stages; its time goes into the report."""
    with console.stage(title) as took:
        result = fn(*args)
    timings[title.split(" ", 1)[1]] = round(took.seconds, 1)
    return result


# --- stages ---------------------------------------------------------------------------------


def _synthesise(plan: DemoPlan) -> dict:
    from dvamn.synth import load_manifest, synthesize

    out = plan.path("videos")
    wanted = {"videos": plan.videos, "seconds": plan.seconds, "seed": SEED}
    marker = plan.path("videos", "demo-synth.json")
    if os.path.exists(marker) and json.load(open(marker)) == wanted:
        say(f"   reusing {plan.videos} videos in {out}")
        return load_manifest(out)

    with console.progress(total=plan.videos, desc="   videos", unit="video") as bar:

        def progress(done, total, what, entry, took_s):  # noqa: ARG001
            bar.update(done - bar.n)

        synthesize(
            out,
            videos=plan.videos,
            seconds=plan.seconds,
            seed=SEED,
            track_seconds=plan.seconds + plan.extra_track_s,
            write_music=True,
            workers=os.cpu_count() or 1,
            progress=progress,
        )
    say(f"   {plan.videos} videos written to {out}")
    with open(marker, "w") as f:
        json.dump(wanted, f)
    return load_manifest(out)


def _choose_models() -> tuple[str, str]:
    """Pretrained VGGish and RTMO when they can be had, else the offline fallbacks."""
    from dvamn.audio import WeightsUnavailableError, check_audio_weights
    from dvamn.pose import PoseWeightsError, load_pose_estimator

    try:
        check_audio_weights("vggish")
        audio = "vggish"
        say("   audio: pretrained VGGish (PCA + 8-bit), as the paper")
    except WeightsUnavailableError:
        audio = "logmel"
        say(
            "   audio: VGGish weights cannot be had offline: using the weight-free logmel embedding"
        )
    try:
        # rtmlib prints its download attempt: into the log file, not onto the console.
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            try:
                load_pose_estimator("rtmo", device="cpu")
            finally:
                log.info("rtmlib: %s", printed.getvalue().strip())
        pose = "rtmo"
        say("   pose: pretrained RTMO: queries are uploaded as videos (POST /match)")
    except PoseWeightsError:
        pose = "keypoints"
        say(
            "   pose: RTMO weights cannot be had offline: features and queries use the videos' "
            "keypoint files (POST /match/keypoints)"
        )
    return audio, pose


def _extract(plan: DemoPlan, audio_kind: str):
    from dvamn.pipeline.config import ExtractConfig, StageResources
    from dvamn.pipeline.extract import run_extract

    actors = min(os.cpu_count() or 2, 8)
    config = ExtractConfig(
        input=plan.path("videos"),
        out=plan.path("features"),
        # Training learns from the true keypoints; the service's pose model is separate.
        pose="keypoints",
        audio=audio_kind,
        # With keypoint files the audio actors do the whole job: one per core (a few).
        audio_stage=StageResources(
            min_actors=actors, max_actors=actors, num_cpus=1.0, videos_per_batch=4
        ),
    )
    summary = run_extract(config)
    for line in summary.lines():
        say("   " + line)
    return summary


def _train(plan: DemoPlan):
    from dvamn.model import DVAMNConfig
    from dvamn.training.config import epoch_scoring
    from dvamn.training.train import SUMMARY_FILE, TrainConfig, TrainResult, say_epochs, train

    run_dir = plan.path("run")
    summary_path = os.path.join(run_dir, SUMMARY_FILE)
    done = TrainResult(**json.load(open(summary_path))) if os.path.exists(summary_path) else None
    if done is not None and len(done.history) >= plan.epochs:
        say(f"   reusing the finished run in {run_dir}")
        return done
    config = TrainConfig(
        features=plan.path("features"),
        out=run_dir,
        workers=plan.workers,
        epochs=plan.epochs,
        stride=plan.stride,
        val_fraction=plan.val_fraction,
        seed=SEED,
        resume=os.path.isdir(run_dir) and bool(os.listdir(run_dir)),
        cpus_per_worker=1.0,
        lr=plan.lr,
        batch_size=plan.batch_size,
        scoring=epoch_scoring(plan.onset_head),
        model=DVAMNConfig(
            onset_head=plan.onset_head,
            widths=plan.widths,
            gru_hidden=plan.gru_hidden,
            post_gru_widths=plan.post_gru_widths,
            fc_width=plan.fc_width,
        ),
    )
    head = ", with an onset head" if plan.onset_head else ""
    say(
        f"   a smaller DVAMN than the paper's (widths {plan.widths}, GRU {plan.gru_hidden}, "
        f"lr {plan.lr}) so that it trains in minutes on 2 CPU cores{head}; "
        "`dvamn train`'s widths default to the paper's"
    )
    return train(config, on_epoch=say_epochs(plan.epochs))


def _held_out(plan: DemoPlan, synth: dict) -> list[dict]:
    from dvamn.training.data import is_validation

    held = [v for v in synth["videos"] if is_validation(v["id"], plan.val_fraction)]
    say(f"   {len(held)} of {len(synth['videos'])} videos are held out (never trained on)")
    return held


def _catalog(plan: DemoPlan, held_out: list[dict], audio_kind: str):
    from dvamn.pipeline.catalog import CatalogConfig, build_catalog

    # Beside the tracks, so that each track's id is its file's stem (the video's id).
    listing = plan.path("videos", "music", "held-out.txt")
    with open(listing, "w") as f:
        for video in held_out:
            f.write(os.path.abspath(plan.path("videos", video["music"]["track_file"])) + "\n")
    summary = build_catalog(
        CatalogConfig(music=listing, out=plan.path("catalog"), audio=audio_kind, device="cpu")
    )
    say(f"   {summary.num_tracks} tracks, {summary.num_errors} errors, version {summary.version}")
    return summary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_and_query(plan, trained, catalog, held_out, pose_kind):
    import httpx
    from ray import serve

    from dvamn.pose import load_keypoint_file
    from dvamn.serving.app import build_app
    from dvamn.serving.auth import API_TOKEN_ENV, bearer_headers

    port = plan.port or _free_port()
    console.route_ray_logs()  # Serve's logger, given a console handler when ray.serve loads
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_app(
        {
            "checkpoint": trained.run_uri,
            "catalog": plan.path("catalog"),
            "device": "cpu",
            "num_cpus": 0.25,
            **({"pose_model": plan.pose_model} if plan.pose_model else {}),
        }
    )
    serve.run(app, name=APP_NAME, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    say(f"   service up at {url} (the web page; OpenAPI at {url}/docs)")
    answers = []
    # A DVAMN_API_TOKEN in the environment reaches the local replicas: send it too.
    headers = bearer_headers(os.environ.get(API_TOKEN_ENV))
    with httpx.Client(base_url=url, timeout=120, headers=headers) as client:
        info = client.get("/catalog").json()
        pool = int(info["num_tracks"])
        for video in console.progress(held_out, desc="   queries", unit="video"):
            if pose_kind == "keypoints":
                track = load_keypoint_file(plan.path("videos", video["keypoints"]))
                body = {
                    "keypoints": track.keypoints.tolist(),
                    "scores": track.scores.tolist(),
                    "fps": float(track.fps),
                    "width": track.width,
                    "height": track.height,
                    "top_k": pool,
                }
                response = client.post("/match/keypoints", json=body)
            else:
                with open(plan.path("videos", video["video"]), "rb") as f:
                    response = client.post(
                        "/match",
                        files={"video": (video["video"], f, "video/mp4")},
                        data={"top_k": str(pool)},
                    )
            response.raise_for_status()
            answer = response.json()
            answers.append({"video": video, "answer": answer})
            _print_answer(video, answer)
    with open(plan.path("answers.json"), "w") as f:
        json.dump(answers, f)  # the service's raw answers, for anyone checking the report
    return answers, {"url": url, "catalog": info}


def _true_track(video: dict) -> str:
    return os.path.splitext(os.path.basename(video["music"]["track_file"]))[0]


def _print_answer(video: dict, answer: dict) -> None:
    truth = _true_track(video)
    ids = [m["track_id"] for m in answer["matches"]]
    rank = ids.index(truth) + 1 if truth in ids else None
    shown = []
    for m in answer["matches"][:3]:
        mark = "*" if m["track_id"] == truth else " "
        shown.append(f"{mark}{m['track_id']} @{m['offset_s']:.1f}s")
    say(f"   {video['id']}: rank {rank} of {len(ids)}   top 3: {'  '.join(shown)}")


def _report(plan, synth, trained, held_out, answers, service, audio_kind, pose_kind, timings):
    import numpy as np

    from dvamn.training.evaluate import evaluate, write_plots
    from dvamn.training.metrics import OFFSET_TOLERANCE_S, RETRIEVAL_FIGURES, rank_figures

    ranks, offset_hits, scores, truths = [], [], [], []
    track_order = None
    for item in answers:
        video, answer = item["video"], item["answer"]
        truth = _true_track(video)
        ids = [m["track_id"] for m in answer["matches"]]
        rank = ids.index(truth) + 1 if truth in ids else len(ids) + 1
        ranks.append(rank)
        if truth in ids:
            offset = answer["matches"][rank - 1]["offset_s"]
            offset_hits.append(abs(offset - video["music"]["offset_s"]) <= OFFSET_TOLERANCE_S)
        if track_order is None:
            track_order = sorted(ids)
        by_id = {m["track_id"]: m["score"] for m in answer["matches"]}
        scores.append([by_id.get(t, np.nan) for t in track_order])
        truths.append(track_order.index(truth) if truth in track_order else -1)
    pool = int(service["catalog"]["num_tracks"])
    scoring = service["catalog"]["scoring"]  # the service's default for this model and catalog
    regression = evaluate(
        trained.run_uri, plan.path("features"), val_fraction=plan.val_fraction, scorings=(scoring,)
    )
    report = {
        "loss": regression["loss"],
        "rmse": regression["rmse"],
        "mae": regression["mae"],
        # offset_within_0_5s over the queries whose track was among the answers
        **rank_figures(ranks, offset_hits, pool),
        "pool_size": pool,
        "queries": len(answers),
        "query_endpoint": "/match/keypoints" if pose_kind == "keypoints" else "/match",
        "audio_embedding": audio_kind,
        "pose_source": pose_kind,
        "window_retrieval": {
            k: regression[k] for k in (*(key for key, _, _ in RETRIEVAL_FIGURES), "pool_size")
        },
        "ranks": {item["video"]["id"]: int(r) for item, r in zip(answers, ranks)},
        "plan": dataclasses.asdict(plan),
        "timings_s": timings,
        "model": answers[0]["answer"].get("model") if answers else None,
        "catalog": service["catalog"],
    }
    plots = write_plots(
        plan.workdir,
        trained.history,
        {
            "scores": np.asarray(scores),
            "query_true_tracks": np.asarray(truths),
            "scoring": scoring,
        },
    )
    with open(plan.path("report.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(plan.path("report.md"), "w") as f:
        f.write(_markdown(report, plots, trained))
    say(
        f"   Recall@1 {report['r_at_1']:.2f}  @5 {report['r_at_5']:.2f}  @10 "
        f"{report['r_at_10']:.2f}  median rank {report['median_rank']:.0f} of {pool} tracks "
        f"(chance R@1 {report['chance_r_at_1']:.3f})"
    )
    return report


def _markdown(report: dict, plots: list, trained) -> str:
    lines = [
        "# DVAMN demo report",
        "",
        f"{report['queries']} held-out synthetic dance videos were sent as silent queries to "
        f"`{report['query_endpoint']}` of the Ray Serve service; the catalog holds "
        f"{report['pool_size']} tracks (the held-out videos' whole music tracks, longer than "
        "the videos). Audio embedding: "
        f"`{report['audio_embedding']}`; pose: `{report['pose_source']}`.",
        "",
        "| metric | service | chance |",
        "|---|---|---|",
        f"| Recall@1 | {report['r_at_1']:.3f} | {report['chance_r_at_1']:.3f} |",
        f"| Recall@5 | {report['r_at_5']:.3f} | {report['chance_r_at_5']:.3f} |",
        f"| Recall@10 | {report['r_at_10']:.3f} | {report['chance_r_at_10']:.3f} |",
        f"| median rank | {report['median_rank']:.1f} | {(report['pool_size'] + 1) / 2:.1f} |",
        f"| best offset within 0.5 s of the truth (when found) | "
        f"{report['offset_within_0_5s']:.3f} | |",
        "",
        "Regression on the validation windows (`dvamn evaluate`, targets' own units): "
        f"loss {report['loss']:.4f}, RMSE {report['rmse']:.4f}, MAE {report['mae']:.4f}.",
        "",
        f"Training: {len(trained.history)} epochs, {trained.parameter_count:,} parameters, "
        f"run in `{trained.run_uri}`.",
        "",
    ]
    for path in plots:
        lines += [f"![{os.path.basename(path)}]({os.path.basename(path)})", ""]
    lines += ["Stage timings (s): " + ", ".join(f"{k} {v}" for k, v in report["timings_s"].items())]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list] = None) -> int:  # pragma: no cover - `python -m dvamn.demo`
    from dvamn.cli import main as cli_main

    return cli_main(["demo", *(argv or [])])
