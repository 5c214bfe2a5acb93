"""DVAMN on Ray: recommend music for a silent dance video.

Stages: ``dvamn.pipeline`` (feature extraction on Ray Data), ``dvamn.training``
(DVAMN on Ray Train), ``dvamn.serving`` (matching service on Ray Serve). Shared pieces
(media decoding, pose, audio embeddings, the network, the scorer) sit beside them.
"""

__version__ = "0.1.0"
