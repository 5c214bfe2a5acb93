"""Sharded matching: a catalog larger than one replica's memory, split across replicas.

``build_app`` with ``shards`` > 1 replaces the single MatchModel deployment by

- ``MatchShard0`` ... ``MatchShard{S-1}``: each replica holds one contiguous part of the
  catalog (``dvamn.search.shard_bounds``) and its search structures, and answers the top-k
  of its part for predicted sequences (``rank_many``); ``replicas_per_shard`` replicas each;
- ``MatchModel`` (the router, same name and interface as the unsharded deployment, so
  that MatchAPI and ``serve_config.yaml`` stay as they are): runs DVAMN on the batch of
  poses, fans the predictions out to every shard and merges their top-k
  (``dvamn.search.merge_rankings``: by score, then catalog index, as one bank orders them,
  so S shards answer exactly what one does with exhaustive search).

Each shard replica loads its catalog as MatchModel does (``user_config``: the catalog URI,
``watch_catalog_s`` to follow its ``CURRENT``). A user_config edit reaches one replica
of each deployment it names; to move every shard replica to a new version, use
``watch_catalog_s`` > 0 (each replica follows CURRENT) or redeploy. Until every shard has
swapped, an answer can combine shards of two versions; it then names every version in
``catalog.shard_versions``.
"""

import asyncio
import logging
import time
from typing import Any, Dict, List, Optional

import numpy as np
from ray import serve

from dvamn.constants import AUDIO_HOP_S
from dvamn.ray_setup import limit_threads
from dvamn.serving.app import MatchModel, ServeSettings
from dvamn.serving.audio_segments import TrackSource

log = logging.getLogger(__name__)


@serve.deployment(name="MatchShard", max_ongoing_requests=32)
class MatchShard(MatchModel.func_or_class):
    """One part of the catalog: MatchModel's catalog loading and swapping, over the
    shard's tracks only; ``rank_many`` answers the router."""

    def __init__(self, settings: ServeSettings, shard: int, num_shards: int):
        self.shard, self.num_shards = shard, num_shards
        super().__init__(settings)

    def _read_catalog(self, uri: str):
        from dvamn.serving.catalog_store import load_catalog
        from dvamn.serving.matcher import holds_embeddings

        shard = (self.shard, self.num_shards)
        catalog = load_catalog(uri, shard=shard, embeddings=holds_embeddings(self.settings.search))
        # A coarse index stored with the version covers the whole catalog: the shard
        # builds its own at load (two-stage search).
        catalog.version_uri = ""
        return catalog

    def rank_many(
        self, predicted: List[np.ndarray], onsets: List[Optional[np.ndarray]], top_ks: List[int]
    ) -> Dict[str, Any]:
        """Each prediction's top-k of this shard, indices in catalog order (``onsets``:
        the queries' predicted onsets for the rhythm term, else Nones)."""
        matcher = self.matcher  # one version for the whole call
        catalog = matcher.catalog
        start = catalog.shard_start
        answers = []
        for prediction, onset, top_k in zip(predicted, onsets, top_ks, strict=True):
            ranking = matcher.ranking(prediction, top_k, onset)
            answers.append(
                {
                    "indices": ranking.indices + start,
                    "scores": ranking.scores,
                    "offsets": ranking.offsets,
                    "track_ids": [catalog.track_ids[i] for i in ranking.indices],
                    "titles": [catalog.titles[i] for i in ranking.indices],
                }
            )
        info = {k: matcher.catalog_info[k] for k in ("version", "version_id", "num_tracks")}
        return {"answers": answers, "catalog": info}


def merge_shard_answers(parts: List[Dict[str, Any]], query: int, top_k: int) -> List[Dict]:
    """The catalog's top-k for query ``query`` from every shard's ``rank_many`` answer."""
    from dvamn.search import merge_rankings
    from dvamn.serving.matcher import Match

    answers = [p["answers"][query] for p in parts]
    rankings = [_Top(a) for a in answers]  # indices already in catalog order
    merged, scores, offsets = merge_rankings(rankings, [0] * len(rankings), top_k)
    where = {int(i): (a, j) for a in answers for j, i in enumerate(a["indices"])}
    out = []
    for i, score, offset in zip(merged, scores, offsets, strict=True):
        answer, j = where[int(i)]
        out.append(
            Match(
                track_id=answer["track_ids"][j],
                title=answer["titles"][j],
                score=float(score),
                offset_s=float(offset) * AUDIO_HOP_S,
            ).to_dict()
        )
    return out


class _Top:
    """A shard's answer seen as a ``Ranking``'s top-k (what ``merge_rankings`` reads)."""

    def __init__(self, answer: Dict[str, Any]):
        self.indices = np.asarray(answer["indices"], np.int64)
        self.scores = np.asarray(answer["scores"], np.float64)
        self.offsets = np.asarray(answer["offsets"], np.int64)


@serve.deployment(name="MatchModel", max_ongoing_requests=32)
class ShardRouter:
    """DVAMN on the batch of poses, then every shard's top-k merged (module docstring).
    Holds the model only, never catalog frames."""

    def __init__(self, settings: ServeSettings, shards: List[Any]):
        from dvamn.devices import resolve_torch_device
        from dvamn.model import load_model
        from dvamn.scoring_names import uses_onset
        from dvamn.serving.matcher import ready_for_inference

        limit_threads(settings.num_cpus, uses_torch=True)
        self.settings = settings
        self.shards = shards
        self.device = resolve_torch_device(settings.device)
        self.model, self.metadata = load_model(settings.checkpoint)
        self.model = ready_for_inference(self.model, self.device)
        # The rhythm term's onsets too: for a scoring that names it, or, where none is named,
        # for a model with an onset head (the shards' default_scoring decides; a shard
        # without the term ignores them).
        self.with_onset = (
            uses_onset(settings.scoring) if settings.scoring else self.model.has_onset_head
        )
        self.match.set_max_batch_size(settings.max_batch_size)
        self.match.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    def reconfigure(self, user_config: Dict[str, Any]) -> None:
        """MatchModel's user_config (serve_config.yaml names it): the shards hold the
        catalog, each with its own copy of this config (module docstring)."""
        log.info("router: catalog config %s is the shards' (set at build)", user_config)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def match(self, poses: List[np.ndarray], top_ks: List[int]) -> List[Dict[str, Any]]:
        from dvamn.serving.matcher import predict_poses

        started = time.perf_counter()
        predicted, onsets = predict_poses(self.model, self.device, poses, self.with_onset)
        model_ms = 1000 * (time.perf_counter() - started) / max(1, len(poses))
        started = time.perf_counter()
        parts = await asyncio.gather(
            *(s.rank_many.remote(predicted, onsets, top_ks) for s in self.shards)
        )
        score_ms = 1000 * (time.perf_counter() - started) / max(1, len(poses))
        catalog = _combined_catalog([p["catalog"] for p in parts])
        return [
            {
                "matches": merge_shard_answers(parts, q, top_k),
                "catalog": catalog,
                "timings_ms": {"model": round(model_ms, 2), "score": round(score_ms, 2)},
                "batch_size": len(poses),
            }
            for q, top_k in enumerate(top_ks)
        ]

    async def info(self) -> Dict[str, Any]:
        from dvamn.serving.matcher import state_dict_version

        infos = await asyncio.gather(*(s.info.remote() for s in self.shards))
        model = dict(infos[0]["model"], version=state_dict_version(self.model))
        catalog = dict(infos[0]["catalog"])
        catalog.update(_combined_catalog([i["catalog"] for i in infos]))
        for key in ("memory_mb", "index_memory_mb", "frames_on_disk_mb", "total_duration_s"):
            if key in catalog:
                catalog[key] = round(sum(i["catalog"].get(key, 0.0) for i in infos), 3)
        catalog["num_playable"] = sum(i["catalog"]["num_playable"] for i in infos)
        return {"model": model, "catalog": catalog}

    async def track_source(self, track_id: str) -> Optional[TrackSource]:
        found = await asyncio.gather(*(s.track_source.remote(track_id) for s in self.shards))
        return next((f for f in found if f is not None), None)


def _combined_catalog(parts: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The catalog an answer came from: the shards' version (all the same outside a swap)
    and their tracks together."""
    versions = sorted({p["version_id"] for p in parts})
    out = {
        "version": parts[0]["version"],
        "version_id": parts[0]["version_id"],
        "num_tracks": int(sum(p["num_tracks"] for p in parts)),
        "shards": len(parts),
    }
    if len(versions) > 1:
        out["shard_versions"] = [p["version_id"] for p in parts]
    return out


def bind_sharded(settings: ServeSettings, replica_settings: ServeSettings, options: Dict):
    """The router bound over ``settings.shards`` shard deployments (``build_app``)."""
    shards = []
    for shard in range(settings.shards):
        shard_options = {k: v for k, v in options.items() if k != "num_replicas"}
        shard_options["name"] = f"MatchShard{shard}"
        if settings.replicas_per_shard is not None:
            shard_options["num_replicas"] = settings.replicas_per_shard
        shards.append(
            MatchShard.options(**shard_options).bind(replica_settings, shard, settings.shards)
        )
    router_options = {k: v for k, v in options.items() if k != "num_replicas"}
    if settings.replicas is not None:
        router_options["num_replicas"] = settings.replicas
    return ShardRouter.options(**router_options).bind(replica_settings, shards)
