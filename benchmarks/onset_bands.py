"""Does an onset target split into mel-band groups carry better to new choreography rules?

Issue 13's rhythm term compares the onset head's prediction with the track's onset
strength summed over all 64 mel bands (``audio_onset``). A dancer answers some instruments
and not others, so this trains a stand-alone onset predictor (the small network's MFC
trunk, ``dvamn.model.MFCBlock``, and an MFC output of one channel per band group) on each
grouping of ``dvamn.audio.onset.band_onset_strength`` and measures onset-only retrieval
(the mean over groups of each group's Pearson correlation, best offset per track) on the
unseen videos, every training seed and epoch. One group of all 64 bands is today's target.

Reads a ``benchmarks/quality.py`` work folder (WORK/feat-train, WORK/synth-train and the
``unseen`` pair; each video's soundtrack is decoded again from SYNTH/VIDEO_ID.mp4 for its
bands). A few minutes on 2 cores:

    python benchmarks/onset_bands.py --work /tmp/q2 --out benchmarks/results/onset-bands.json

The checkpoint of each run is chosen by onset-only R@1 on the in-family validation videos
(ties by the earlier epoch), never by the unseen figure; the best unseen epoch is shown too.
"""

import argparse
import os
import sys
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.report import write_json  # noqa: E402 - after the path

GROUPINGS: Dict[str, Tuple[Tuple[int, int], ...]] = {
    "all 64 (today)": ((0, 64),),
    "3 groups": ((0, 12), (12, 36), (36, 64)),
    "4 groups": ((0, 8), (8, 24), (24, 44), (44, 64)),
    "8 groups": tuple((8 * i, 8 * i + 8) for i in range(8)),
}
QUERY_STRIDE = 60  # pose frames between query windows, as dvamn evaluate
BATCH = 64


def load(work: str, split: str, bands: Sequence[Tuple[int, int]]):
    """Videos of WORK/feat-SPLIT with their band onsets (T, 64 one-band groups) from the
    soundtracks of WORK/synth-SPLIT."""
    from dvamn.audio.onset import band_onset_strength
    from dvamn.media import read_audio
    from dvamn.training.data import collect_features, read_features

    videos, _ = collect_features(read_features(os.path.join(work, f"feat-{split}")))
    per_band = tuple((b, b + 1) for b in range(64))
    out = []
    for v in videos:
        path = os.path.join(work, f"synth-{split}", f"{v.video_id}.mp4")
        if not os.path.exists(path):
            raise SystemExit(f"{path}: no soundtrack for features video {v.video_id!r}")
        wave, _ = read_audio(path)
        onsets = band_onset_strength(wave, len(v.pose), per_band)  # (T, 64)
        if v.onset is not None and not np.allclose(onsets.mean(1), v.onset, atol=1e-3):
            raise SystemExit(f"{path}: its onsets differ from the features' audio_onset")
        out.append((v, onsets))
    return out


def targets(onsets: np.ndarray, groups) -> np.ndarray:
    """(T, 64) per-band onsets -> (T, K) each group's mean, smoothed as the rhythm term."""
    from dvamn.rhythm import smooth_series

    return np.stack(
        [smooth_series(onsets[:, a:z].mean(1).astype(np.float64)) for a, z in groups], 1
    )


def unit(x: np.ndarray, axis: int) -> np.ndarray:
    c = x - x.mean(axis, keepdims=True)
    return c / np.maximum(np.linalg.norm(c, axis=axis, keepdims=True), 1e-9)


def retrieval(predict, videos, groups, window: int) -> Dict[str, float]:
    """Onset-only retrieval of every video's query windows among all ``videos``' tracks."""
    track_windows = []
    queries, poses = [], []
    for k, (v, onsets) in enumerate(videos):
        t = targets(onsets, groups)
        starts = range(0, len(t) - window + 1, 2)
        track_windows.append(unit(np.stack([t[a : a + window] for a in starts]), 1))  # (O, T, K)
        for s in range(0, len(v.pose) - window + 1, QUERY_STRIDE):
            queries.append(k)
            poses.append(v.pose[s : s + window])
    predicted = unit(predict(np.stack(poses)), 1)  # (Q, T, K)
    ranks = []
    for k, q in zip(queries, predicted):
        best = np.array([np.einsum("otk,tk->o", w, q).max() for w in track_windows])
        ranks.append(int((best > best[k]).sum()) + 1)
    r = np.array(ranks)
    return {
        "r_at_1": float((r == 1).mean()),
        "r_at_5": float((r <= 5).mean()),
        "median_rank": float(np.median(r)),
        "queries": len(r),
        "pool": len(videos),
    }


def train_one(train, val, unseen, groups, seed: int, epochs: int, window: int) -> dict:
    from dvamn.model import MFC, MFCBlock

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    poses = np.concatenate([v.pose for v, _ in train])
    mean = torch.as_tensor(poses.mean(0), dtype=torch.float32)
    std = torch.as_tensor(np.maximum(poses.std(0), 1e-6), dtype=torch.float32)
    xs, ys = [], []
    for v, onsets in train:
        t = targets(onsets, groups)
        for s in range(0, len(v.pose) - window + 1, 10):  # the small network's stride
            xs.append(v.pose[s : s + window])
            ys.append(t[s : s + window])
    x_train = torch.tensor(np.stack(xs), dtype=torch.float32)
    y_train = torch.tensor(np.stack(ys), dtype=torch.float32)
    widths, blocks, previous = (32, 64, 128), [], x_train.shape[-1]
    for i, width in enumerate(widths):
        blocks.append(MFCBlock(previous, width, 7, 0.1 if i else 0.0))
        previous = width
    net = torch.nn.Sequential(*blocks, MFC(previous, len(groups), 5, relu=False))
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.0)

    def forward(x):
        return net(((x - mean) / std).transpose(1, 2)).transpose(1, 2)  # (B, T, K)

    def predict(p: np.ndarray) -> np.ndarray:
        net.eval()
        with torch.no_grad():
            x = torch.tensor(p, dtype=torch.float32)
            out = torch.cat([forward(x[i : i + 256]) for i in range(0, len(x), 256)])
        net.train()
        return out.double().numpy()

    def centred_unit(x):
        c = x - x.mean(1, keepdim=True)
        return c / c.norm(dim=1, keepdim=True).clamp_min(1e-6)

    history = []
    for epoch in range(1, epochs + 1):
        order = torch.as_tensor(rng.permutation(len(x_train)))
        total = 0.0
        for i in range(0, len(order), BATCH):
            b = order[i : i + BATCH]
            loss = 1 - (centred_unit(forward(x_train[b])) * centred_unit(y_train[b])).sum(1).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(b)
        history.append(
            {
                "epoch": epoch,
                "loss": total / len(x_train),
                "validation": retrieval(predict, val, groups, window),
                "unseen": retrieval(predict, unseen, groups, window),
            }
        )
        h = history[-1]
        print(
            f"  seed {seed} epoch {epoch}: loss {h['loss']:.3f}, validation R@1 "
            f"{h['validation']['r_at_1']:.3f}, unseen R@1 {h['unseen']['r_at_1']:.3f}",
            flush=True,
        )
    chosen = max(history, key=lambda h: (h["validation"]["r_at_1"], -h["epoch"]))
    return {"seed": seed, "chosen_epoch": chosen["epoch"], "chosen": chosen, "history": history}


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="a benchmarks/quality.py work folder")
    parser.add_argument("--groupings", default=",".join(GROUPINGS), help="names of GROUPINGS")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=4, help="default %(default)s")
    parser.add_argument("--out", default="benchmarks/results/onset-bands.json")
    args = parser.parse_args(argv)
    names = [n for n in args.groupings.split(",") if n]
    unknown = [n for n in names if n not in GROUPINGS]
    if unknown:
        parser.error(f"unknown groupings {unknown}; choose from {list(GROUPINGS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]

    from dvamn.constants import WINDOW_POSE_FRAMES
    from dvamn.ray_setup import ensure_ray
    from dvamn.training.data import is_validation

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    ensure_ray()
    started = time.perf_counter()
    videos = load(args.work, "train", GROUPINGS[names[0]])
    train = [(v, o) for v, o in videos if not is_validation(v.video_id)]
    val = [(v, o) for v, o in videos if is_validation(v.video_id)]
    unseen = load(args.work, "unseen", GROUPINGS[names[0]])
    print(f"{len(train)} training, {len(val)} validation, {len(unseen)} unseen videos", flush=True)
    results = {"work": args.work, "epochs": args.epochs, "seeds": seeds, "runs": {}}
    for name in names:
        print(f"{name}: {GROUPINGS[name]}", flush=True)
        results["runs"][name] = [
            train_one(train, val, unseen, GROUPINGS[name], s, args.epochs, WINDOW_POSE_FRAMES)
            for s in seeds
        ]
    results["seconds"] = time.perf_counter() - started

    print("\nonset-only unseen R@1 (pool of the unseen videos), checkpoint by validation R@1")
    print("| band groups | per seed (epoch) | mean | best epoch per seed, for reference |")
    print("|---|---|---|---|")
    for name, runs in results["runs"].items():
        chosen = [r["chosen"]["unseen"]["r_at_1"] for r in runs]
        per_seed = ", ".join(f"{c:.3f} ({r['chosen_epoch']})" for c, r in zip(chosen, runs))
        best = ", ".join(f"{max(h['unseen']['r_at_1'] for h in r['history']):.3f}" for r in runs)
        print(f"| {name} | {per_seed} | {np.mean(chosen):.3f} | {best} |")
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
