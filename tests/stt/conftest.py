"""Fixtures of the STT tests: the real Smart Turn model, fetched from PyPI once and cached outside the repo."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from stt.smart_turn import fetch

SMART_TURN_CACHE = Path(tempfile.gettempdir()) / "voice-assistant-test-cache" / "smart-turn-v3.2-cpu.onnx"
"""Kept between runs (it is 8.7 MB from a 12 MB download); `fetch` checks its SHA-256 and fetches it again
when it is missing or damaged, the same code a user's first start runs."""


@pytest.fixture(scope="session")
def smart_turn_model() -> Path:
    return fetch(SMART_TURN_CACHE)
