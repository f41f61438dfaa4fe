"""What a turn speaks, piece by piece: the runs of a document or of SSML (Segment), and the fragments the
runner synthesizes in one go (Fragment). Plain values: a job's parts carry them to other processes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Segment:
    """A run of text spoken with one voice at one speed, then an exact pause: a document block, or a run
    of SSML between its breaks, voice and prosody changes (checked: the voice resolved, the speed allowed)."""

    text: str
    """The words; empty for a pause alone (an SSML break before any words)."""
    voice: str
    speed: float
    speaker: str | None = None
    pause_after_ms: int = 0
    engine: str | None = None
    """The engine whose voice it is (None: the turn's): a document's blocks may each name one."""


@dataclass(frozen=True)
class Fragment:
    """What the runner synthesizes in one go: a sentence of its segment, maybe followed by a pause."""

    text: str
    voice: str
    speed: float
    speaker: str | None
    pause_after_ms: int = 0
    engine: str | None = None
    """As its segment's (None: the turn's engine)."""
