"""Stable partial transcripts: a word is shown as settled once two consecutive hypotheses agree.

Re-transcribing a growing utterance makes Whisper revise its last words; showing every hypothesis
makes text flicker. Following LocalAgreement-2 (as in whisper_streaming), the `stable` prefix only
ever grows; the rest of the newest hypothesis is offered separately as `unstable`.
Pure logic, one instance per utterance.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PACE = 2.0
"""Audio seconds per wall-clock second above which audio counts as sent at once rather than spoken live."""


@dataclass(frozen=True)
class Partial:
    stable: str
    """Words two consecutive hypotheses agreed on; never shrinks within an utterance."""
    unstable: str
    """The rest of the newest hypothesis; may change with the next one."""


class PartialStabilizer:
    def __init__(self) -> None:
        self._previous: list[str] = []
        self._stable: list[str] = []
        self._last: Partial | None = None

    def update(self, hypothesis: str) -> Partial | None:
        """The partial to show for a new hypothesis, or None when it would show nothing new."""
        words = hypothesis.split()
        agreed = _common_prefix(self._previous, words)
        if len(agreed) > len(self._stable) and agreed[: len(self._stable)] == self._stable:
            self._stable = agreed
        self._previous = words
        continues = words[: len(self._stable)] == self._stable
        partial = Partial(" ".join(self._stable), " ".join(words[len(self._stable) :]) if continues else "")
        if partial == self._last or not (partial.stable or partial.unstable):
            return None
        self._last = partial
        return partial


def _common_prefix(first: list[str], second: list[str]) -> list[str]:
    prefix: list[str] = []
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        prefix.append(a)
    return prefix


class ArrivalPace:
    """How fast an utterance's audio arrives. A partial shows the words while the user speaks; audio sent at once
    (a recording, a Wyoming client) gets its final soon anyway, and a partial then takes the CPU from it
    (bench/peers_bench.py: 1.6 to 1.9 times wyoming-faster-whisper's time on two cores). One per utterance."""

    def __init__(self) -> None:
        self._start: tuple[float, float] | None = None

    def in_real_time(self, heard_s: float, now: float) -> bool:
        """Whether the utterance's `heard_s` seconds so far came at most MAX_PACE times faster than spoken since
        the first call, which only starts the clock (and answers False)."""
        if self._start is None:
            self._start = (now, heard_s)
            return False
        since, then = self._start
        return heard_s - then <= (now - since) * MAX_PACE
