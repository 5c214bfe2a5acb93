"""What every benchmark here does with its results: JSON at ``--out``."""

import json
import os
from typing import Any


def write_json(path: str, results: Any) -> None:
    """Write ``results`` as indented JSON to ``path`` (its folder made if missing) and say so."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {path}")
