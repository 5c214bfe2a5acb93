"""Synthetic dance data: music from beats, tempo, timbre and key; a stick figure dancing
to it; real mp4 files with the true keypoints beside them (``dvamn synth``).

Modules: ``music`` (score + audio), ``dancer`` (motion, palette, camera), ``families``
(choreography families: other rules for the dance), ``video``
(drawing, mp4 encoding), ``clip`` (one video), ``broken`` (bad inputs), ``generate``
(``synthesize``), ``cli``. Kept import-light: ``from dvamn.synth import synthesize``
loads the generator on first use.
"""

from typing import Any

__all__ = ["synthesize", "SynthResult", "load_manifest"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from dvamn.synth import generate

        return getattr(generate, name)
    raise AttributeError(f"module 'dvamn.synth' has no attribute {name!r}")
