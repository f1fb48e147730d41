"""Guest checks run by `tuoba test` against a booted image (testinfra's `host` fixture).

`tuoba test` passes the image's manifest and the forwarded ssh port in the environment.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest


@pytest.fixture(scope="session")
def manifest() -> dict[str, Any]:
    raw = os.environ.get("TUOBA_MANIFEST")
    if not raw:
        pytest.fail("guest checks run through `tuoba test`, which sets TUOBA_MANIFEST")
    data: dict[str, Any] = json.loads(raw)
    return data


@pytest.fixture(scope="session")
def guest_port() -> int:
    return int(os.environ["TUOBA_GUEST_PORT"])


@pytest.fixture(scope="session")
def console() -> str:
    """The serial console log of the boot (checks for boards without a network read it)."""
    with open(os.environ["TUOBA_CONSOLE_LOG"], errors="replace") as f:
        return re.sub(r"\x1b\[[0-9;]*m", "", f.read())  # drop colour codes
