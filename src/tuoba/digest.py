"""The one digest of build inputs: what cache keys, record signatures and image seeds are."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def digest(value: Any) -> str:
    """sha256 of a JSON rendering with sorted keys (values JSON cannot hold: their str())."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
