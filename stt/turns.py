"""End of turn: when a pause ends what the user is saying (stt.turn_detection).

- `silence`: the segmenter closes an utterance after stt.endpoint_silence_ms of silence (stt/stream.py).
- `smart_turn`: once a pause reaches stt.turn_min_silence_ms, the Smart Turn model (stt/smart_turn.py) judges
  the utterance so far. Complete: the session ends it at once (`UtteranceSegmenter.end_turn`). Incomplete: it
  keeps listening, and endpoint_silence_ms still ends the turn (the upper bound).

The model is judged once per pause: a pause is the utterance's `speech_mark` (it changes only when speech
resumes), so a long pause costs one inference, not one per VAD window.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import anyio

from core.config import Settings, SttSettings
from core.logging import get_logger
from stt.smart_turn import SmartTurnError, SmartTurnModel, TurnVerdict, fetch
from stt.stream import WINDOW_SECONDS, Event, SpeechEnded, Utterance, UtteranceSegmenter

log = get_logger(__name__)


def pause_windows(stt: SttSettings) -> int:
    """turn_min_silence_ms in whole VAD windows, rounded down as endpoint_silence_ms is (stt/stream.py)."""
    return max(1, int(stt.turn_min_silence_ms / 1000 / WINDOW_SECONDS))


def paused_long_enough(segmenter: UtteranceSegmenter, windows: int) -> bool:
    """The utterance holds enough speech to be transcribed and has paused for `windows` VAD windows."""
    return segmenter.speech_confirmed and round(segmenter.trailing_silence_seconds / WINDOW_SECONDS) >= windows


class TurnModelHolder:
    """The process's one Smart Turn model, loaded (and fetched when missing) in the background at start."""

    def __init__(self, settings: Settings) -> None:
        stt = settings.stt
        self.enabled = stt.turn_detection == "smart_turn"
        self.path = settings.resolve_path(stt.smart_turn_model)
        self.threshold = stt.smart_turn_threshold
        self.model: SmartTurnModel | None = None
        self.error: str | None = None
        self.loading = self.enabled

    async def load(self) -> None:
        """Never raises: without the model (also while it loads), sessions end turns at endpoint_silence_ms."""
        if not self.enabled:
            return
        try:
            self.model = await anyio.to_thread.run_sync(self._load, abandon_on_cancel=True)
        except SmartTurnError as exc:
            self.error = str(exc)
            log.error("smart_turn_unavailable", reason=self.error, fallback="endpoint_silence_ms")
        else:
            log.info("smart_turn_loaded", path=str(self.path))
        finally:
            self.loading = False

    def _load(self) -> SmartTurnModel:
        return SmartTurnModel(fetch(self.path), self.threshold)

    def health(self) -> dict[str, Any]:
        mode = "smart_turn" if self.enabled else "silence"
        return {"mode": mode, "loading": self.loading, "model_loaded": self.model is not None, "error": self.error}


class TurnTaker:
    """One session's end-of-turn state: which pause the model judged last, and what it said."""

    def __init__(self, stt: SttSettings, models: TurnModelHolder, *, endpointing: bool = True) -> None:
        self._models = models
        self._enabled = models.enabled and endpointing
        self._windows = pause_windows(stt)
        self._judged: tuple[tuple[float, float], TurnVerdict] | None = None

    def model_due(self, segmenter: UtteranceSegmenter) -> SmartTurnModel | None:
        """The model to ask now, or None: not smart_turn, no model, no pause long enough, or this pause judged."""
        model = self._models.model if self._enabled else None
        if model is None or not paused_long_enough(segmenter, self._windows):
            return None
        if self._judged is not None and self._judged[0] == segmenter.speech_mark:
            return None
        return model

    def judged(self, mark: tuple[float, float], verdict: TurnVerdict) -> None:
        self._judged = (mark, verdict)

    def verdict_for(self, utterance: Utterance) -> TurnVerdict | None:
        """The verdict on the pause that ended this utterance; None when the model did not judge that pause."""
        if self._judged is None or self._judged[0] != (utterance.start, utterance.speech_seconds):
            return None
        return self._judged[1]

    def annotate(self, events: list[Event]) -> list[Event]:
        """Each SpeechEnded with the verdict on its utterance (the segmenter emits the Utterance right after it)."""
        if not self._enabled:
            return events
        annotated = list(events)
        for index, event in enumerate(events[:-1]):
            following = events[index + 1]
            if isinstance(event, SpeechEnded) and isinstance(following, Utterance):
                verdict = self.verdict_for(following)
                if verdict is not None:
                    annotated[index] = replace(event, turn_complete=verdict.complete, turn_probability=verdict.probability)
        return annotated

    def timings(self, utterance: Utterance) -> dict[str, float | bool]:
        """The transcript's timings of turn detection (none with `silence`)."""
        verdict = self.verdict_for(utterance) if self._enabled else None
        if verdict is None:
            return {}
        return {
            "turn_complete": verdict.complete,
            "turn_probability": verdict.probability,
            "turn_model_s": round(verdict.seconds, 3),
        }
