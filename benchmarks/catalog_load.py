"""Peak memory of a two-stage replica's catalog load: embeddings held, or streamed.

    python benchmarks/catalog_load.py                          # 1,000 tracks, a few minutes
    python benchmarks/catalog_load.py --tracks 2000 --out benchmarks/results/catalog-load.json

Writes a catalog of synthetic 3-minute tracks (random embeddings, 900 frames of 128, as
``benchmarks/serve.py``'s) with ``write_catalog_tables``, then loads it the two ways a
two-stage replica could, each in a fresh Python process so that one's peak does not hide
the other's:

- ``held``: ``load_catalog(uri)`` (every embedding in memory, float32), then the float16
  unit-frames file written from them (``unit_bank_on_disk``): what replicas did before;
- ``streamed``: ``load_catalog(uri, embeddings=False)``, the frames file written from the
  version's parts as they are read (``Catalog.iter_embeddings``): what they do now.

For each: the growth of the process's peak resident memory (VmHWM) over its peak after
imports, per track, and the load time; then what stays resident, anonymous memory and file
pages (the frames file's pages the kernel keeps mapped count as resident until it
reclaims them: both ways write the same file). Same catalog, same command: the ratio is the result; the
absolute figures depend on the machine and its load. Prints a table and writes JSON.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import write_json  # noqa: E402 - after the path

TRACK_FRAMES = 900  # 3 minutes at 5 Hz

_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from dvamn.serving.catalog_store import load_catalog
from dvamn.serving.matcher import unit_bank_on_disk

def status_mb(key):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0

def peak_mb():
    return status_mb("VmHWM")

before = peak_mb()
started = time.perf_counter()
catalog = load_catalog({uri!r}, embeddings={embeddings!r})
bank = unit_bank_on_disk(catalog, None, None)
print(json.dumps({{"growth_mb": peak_mb() - before, "seconds": time.perf_counter() - started,
                   "tracks": len(catalog), "rss_anon_mb_after": status_mb("RssAnon"),
                   "rss_file_mb_after": status_mb("RssFile")}}))
"""


def write_tracks(root: str, num_tracks: int, seed: int = 0) -> None:
    """A catalog of random 3-minute tracks, written in slices (bounded memory here too)."""
    import pyarrow as pa

    from dvamn.catalog_format import CATALOG_SCHEMA, embedding_sha256
    from dvamn.pipeline.catalog import write_catalog_tables
    from dvamn.schema import rows_to_table

    rng = np.random.default_rng(seed)
    tables = []
    for start in range(0, num_tracks, 250):
        rows = []
        for i in range(start, min(num_tracks, start + 250)):
            embedding = rng.standard_normal((TRACK_FRAMES, 128)).astype(np.float32)
            rows.append(
                {
                    "track_id": f"track-{i:06d}",
                    "title": f"track {i}",
                    "uri": "",
                    "duration_s": TRACK_FRAMES * 0.2,
                    "num_audio_frames": TRACK_FRAMES,
                    "embedding": embedding,
                    "embedding_sha256": embedding_sha256(embedding),
                    "audio_embedding_kind": "logmel",
                    "audio_weights": "",
                    "source": "synthetic",
                    "audio_playable": False,
                    "cataloged_at": "",
                    # as a real catalog's: loaded with the metadata either way
                    "audio_onset": rng.random(2 * TRACK_FRAMES).astype(np.float32),
                }
            )
        tables.append(rows_to_table(rows, CATALOG_SCHEMA))
    write_catalog_tables(root, pa.concat_tables(tables))


def load_in_child(uri: str, embeddings: bool) -> dict:
    code = _CHILD.format(root=str(ROOT), uri=uri, embeddings=embeddings)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the load failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracks", type=int, default=1000)
    parser.add_argument("--work", help="folder for the catalog (default: a temporary one)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.work) as work:
        root = os.path.join(work, "catalog")
        started = time.perf_counter()
        write_tracks(root, args.tracks)
        print(f"wrote {args.tracks} tracks in {time.perf_counter() - started:.0f} s")
        results = {
            "tracks": args.tracks,
            "track_frames": TRACK_FRAMES,
            "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()},
            "command": " ".join(["python", "benchmarks/catalog_load.py", *sys.argv[1:]]),
        }
        for name, embeddings in (("held", True), ("streamed", False)):
            run = load_in_child(root, embeddings)
            run["kb_per_track"] = 1024 * run["growth_mb"] / run["tracks"]
            results[name] = run
    held, streamed = results["held"], results["streamed"]
    results["peak_ratio_streamed_over_held"] = streamed["growth_mb"] / held["growth_mb"]
    print(f"{'load':<10} {'peak growth MB':>15} {'KB a track':>11} {'seconds':>8}")
    for name in ("held", "streamed"):
        run = results[name]
        print(
            f"{name:<10} {run['growth_mb']:>15.1f} {run['kb_per_track']:>11.1f} "
            f"{run['seconds']:>8.1f}"
        )
    print(f"streamed / held peak: {results['peak_ratio_streamed_over_held']:.3f}")
    if args.out:
        write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
