"""UtteranceSegmenter rules, driven window by window with chosen speech probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from stt.stream import (
    SAMPLE_RATE,
    BufferLimitReached,
    NoSpeech,
    SegmenterLimits,
    SpeechEnded,
    SpeechStarted,
    Utterance,
    UtteranceSegmenter,
)
from stt.vad import WINDOW_SAMPLES

SPEECH, SILENCE, UNSURE = 0.9, 0.05, 0.45  # UNSURE: between neg_threshold (0.35) and threshold (0.5)


def limits(**overrides: float) -> SegmenterLimits:
    values = dict(
        threshold=0.5,
        endpoint_windows=10,
        min_speech_windows=3,
        pad_windows=4,
        max_utterance_samples=100 * WINDOW_SAMPLES,
        max_buffer_samples=400 * WINDOW_SAMPLES,
    )
    values.update(overrides)
    return SegmenterLimits(**values)  # type: ignore[arg-type]


def feed(segmenter: UtteranceSegmenter, pattern: list[tuple[float, int]]) -> list:
    """Like feed_all, without the speech_started/speech_ended notices."""
    return without_notices(feed_all(segmenter, pattern))


def without_notices(events: list) -> list:
    return [e for e in events if not isinstance(e, SpeechStarted | SpeechEnded)]


def feed_all(segmenter: UtteranceSegmenter, pattern: list[tuple[float, int]]) -> list:
    """Feed (probability, count) runs; each window is filled with its own index so cuts are traceable."""
    events = []
    for probability, count in pattern:
        start = segmenter._position // WINDOW_SAMPLES
        windows = np.stack([np.full(WINDOW_SAMPLES, start + i, dtype=np.float32) for i in range(count)])
        events += segmenter.push(windows, np.full(count, probability, dtype=np.float32))
    return events


def window_ids(utterance: Utterance) -> list[int]:
    return [int(utterance.audio[i]) for i in range(0, len(utterance.audio), WINDOW_SAMPLES)]


def test_from_settings_rounds_milliseconds_up_to_whole_windows(make_settings) -> None:
    stt = make_settings(stt={"endpoint_silence_ms": 600, "min_speech_ms": 200, "speech_pad_ms": 300}).stt
    result = SegmenterLimits.from_settings(stt)
    # Endpoint rounds down (Silero's tail adds a window); the others round up.
    assert (result.endpoint_windows, result.min_speech_windows, result.pad_windows) == (18, 7, 10)
    assert result.max_utterance_samples == 12 * SAMPLE_RATE
    assert result.max_buffer_samples == 120 * SAMPLE_RATE


def test_speech_then_silence_emits_one_utterance_with_pre_roll_and_trimmed_tail() -> None:
    segmenter = UtteranceSegmenter(limits())
    events = feed(segmenter, [(SILENCE, 20), (SPEECH, 30), (SILENCE, 10)])
    assert len(events) == 1
    utterance = events[0]
    assert isinstance(utterance, Utterance) and utterance.reason == "silence"
    # 4 windows of pre-roll (16-19), the speech (20-49), 4 windows of trailing pad (50-53).
    assert window_ids(utterance) == list(range(16, 54))
    assert utterance.start == pytest.approx(16 * WINDOW_SAMPLES / SAMPLE_RATE, abs=1e-3)
    assert utterance.speech_seconds == pytest.approx(30 * 0.032, abs=1e-3)
    assert not segmenter.in_speech


def test_silence_alone_never_emits_and_keeps_only_the_pre_roll() -> None:
    segmenter = UtteranceSegmenter(limits())
    assert feed(segmenter, [(SILENCE, 1000)]) == []
    assert segmenter.held_samples == 0
    assert len(segmenter._pre_roll) == 4


def test_speech_shorter_than_min_speech_is_dropped() -> None:
    segmenter = UtteranceSegmenter(limits())
    assert feed(segmenter, [(SPEECH, 2), (SILENCE, 15)]) == []
    assert segmenter.held_samples == 0 and segmenter.queued_samples == 0


def test_unsure_windows_after_speech_do_not_count_as_silence() -> None:
    segmenter = UtteranceSegmenter(limits())
    events = feed(segmenter, [(SPEECH, 5), (UNSURE, 30)])
    assert events == [] and segmenter.in_speech
    events = feed(segmenter, [(SILENCE, 10)])
    assert [type(e) for e in events] == [Utterance]


def test_unsure_windows_continue_a_silence_run_that_has_started() -> None:
    segmenter = UtteranceSegmenter(limits())
    events = feed(segmenter, [(SPEECH, 5), (SILENCE, 5), (UNSURE, 5)])
    assert [type(e) for e in events] == [Utterance]


def test_speech_resuming_before_the_endpoint_keeps_one_utterance() -> None:
    segmenter = UtteranceSegmenter(limits())
    events = feed(segmenter, [(SPEECH, 5), (SILENCE, 9), (SPEECH, 5), (SILENCE, 10)])
    assert len(events) == 1
    assert events[0].speech_seconds == pytest.approx(10 * 0.032, abs=1e-3)


def test_max_duration_cuts_exactly_and_the_next_utterance_continues_without_pre_roll() -> None:
    segmenter = UtteranceSegmenter(limits(max_utterance_samples=50 * WINDOW_SAMPLES))
    events = feed(segmenter, [(SILENCE, 4), (SPEECH, 70), (SILENCE, 10)])
    assert [e.reason for e in events] == ["max_duration", "silence"]
    first, second = events
    assert len(first.audio) == 50 * WINDOW_SAMPLES
    assert window_ids(first) == list(range(0, 50))
    assert window_ids(second) == list(range(50, 78))
    assert second.start == pytest.approx(50 * WINDOW_SAMPLES / SAMPLE_RATE, abs=1e-3)


def test_end_emits_the_utterance_with_its_tail_at_once() -> None:
    segmenter = UtteranceSegmenter(limits())
    feed(segmenter, [(SPEECH, 6)])
    events = without_notices(segmenter.end(np.full(100, -1.0, dtype=np.float32)))
    assert len(events) == 1 and events[0].reason == "end"
    assert len(events[0].audio) == 6 * WINDOW_SAMPLES + 100
    assert events[0].audio[-1] == -1.0


def test_end_without_speech_is_acknowledged_as_no_speech() -> None:
    segmenter = UtteranceSegmenter(limits())
    feed(segmenter, [(SILENCE, 25)])
    events = without_notices(segmenter.end(np.zeros(256, dtype=np.float32)))
    assert events == [NoSpeech(round((25 * WINDOW_SAMPLES + 256) / SAMPLE_RATE, 3))]


def test_end_with_too_little_speech_is_no_speech() -> None:
    segmenter = UtteranceSegmenter(limits())
    feed(segmenter, [(SPEECH, 2)])
    events = without_notices(segmenter.end(np.zeros(0, dtype=np.float32)))
    assert len(events) == 1 and isinstance(events[0], NoSpeech)
    assert segmenter.held_samples == 0


def test_buffer_limit_closes_the_utterance_drops_audio_and_resumes_when_room_frees() -> None:
    segmenter = UtteranceSegmenter(
        limits(max_buffer_samples=60 * WINDOW_SAMPLES, max_utterance_samples=40 * WINDOW_SAMPLES)
    )
    # The first utterance (40 windows, cut when the 41st arrives) waits for a worker;
    # the second one fills the remaining 20.
    events = feed(segmenter, [(SPEECH, 41)])
    assert [e.reason for e in events] == ["max_duration"]
    first = events[0]
    assert segmenter.queued_samples == 40 * WINDOW_SAMPLES

    events = feed(segmenter, [(SPEECH, 29)])
    assert isinstance(events[0], BufferLimitReached)
    assert events[0].duration == pytest.approx(60 * WINDOW_SAMPLES / SAMPLE_RATE, abs=1e-3)
    # The utterance in progress is closed at the limit and still transcribed.
    assert isinstance(events[1], Utterance) and events[1].reason == "buffer_limit"
    assert window_ids(events[1]) == list(range(40, 60))
    assert len(events) == 2, "the limit is reported once per overflow, not once per dropped window"
    assert segmenter.held_samples == 60 * WINDOW_SAMPLES

    segmenter.transcribed(first)
    segmenter.transcribed(events[1])
    assert segmenter.held_samples == 0
    events = feed(segmenter, [(SPEECH, 5), (SILENCE, 10)])
    assert [e.reason for e in events] == ["silence"]
    assert window_ids(events[0])[0] == 70, "audio that arrived while full was dropped, not queued"


def test_reset_drops_the_utterance_in_progress_and_restarts_the_clock() -> None:
    segmenter = UtteranceSegmenter(limits())
    feed(segmenter, [(SILENCE, 10), (SPEECH, 20)])
    dropped = segmenter.reset()
    assert dropped == pytest.approx(24 * WINDOW_SAMPLES / SAMPLE_RATE, abs=1e-3)
    assert segmenter.held_samples == 0 and not segmenter.in_speech
    events = feed(segmenter, [(SPEECH, 5), (SILENCE, 10)])
    assert events[0].start == 0.0


def test_speech_started_comes_once_speech_is_confirmed_and_speech_ended_at_the_endpoint() -> None:
    segmenter = UtteranceSegmenter(limits())
    events = feed_all(segmenter, [(SILENCE, 10), (SPEECH, 2)])
    assert events == [], "two windows are not yet min_speech (3): a click must not trigger barge-in"
    events = feed_all(segmenter, [(SPEECH, 1)])
    assert events == [SpeechStarted(round(10 * WINDOW_SAMPLES / SAMPLE_RATE, 3))]
    events = feed_all(segmenter, [(SPEECH, 5), (SILENCE, 10)])
    assert [type(e) for e in events] == [SpeechEnded, Utterance]
    assert events[0] == SpeechEnded(round(18 * WINDOW_SAMPLES / SAMPLE_RATE, 3), "silence")


def test_a_blip_too_short_for_speech_gives_no_notices() -> None:
    segmenter = UtteranceSegmenter(limits())
    assert feed_all(segmenter, [(SPEECH, 2), (SILENCE, 15)]) == []


def test_a_max_duration_cut_inside_speech_is_not_a_new_start() -> None:
    segmenter = UtteranceSegmenter(limits(max_utterance_samples=20 * WINDOW_SAMPLES))
    events = feed_all(segmenter, [(SPEECH, 50), (SILENCE, 10)])
    kinds = [type(e).__name__ for e in events]
    assert kinds.count("SpeechStarted") == 1 and kinds.count("SpeechEnded") == 1
    assert kinds[0] == "SpeechStarted" and kinds[-2:] == ["SpeechEnded", "Utterance"]


def test_end_reports_speech_ended_before_the_utterance() -> None:
    segmenter = UtteranceSegmenter(limits())
    feed_all(segmenter, [(SPEECH, 6)])
    events = segmenter.end(np.zeros(10, dtype=np.float32))
    assert [type(e) for e in events] == [SpeechEnded, Utterance]
    assert events[0].reason == "end"


def test_current_audio_is_the_utterance_so_far() -> None:
    segmenter = UtteranceSegmenter(limits())
    feed_all(segmenter, [(SILENCE, 10), (SPEECH, 5)])
    assert window_ids_of(segmenter.current_audio()) == list(range(6, 15))
    assert segmenter.speech_confirmed


def window_ids_of(audio: np.ndarray) -> list[int]:
    return [int(audio[i]) for i in range(0, len(audio), WINDOW_SAMPLES)]


def test_end_turn_closes_the_utterance_in_its_pause_as_the_endpoint_would() -> None:
    segmenter = UtteranceSegmenter(limits())
    assert feed_all(segmenter, [(SILENCE, 20), (SPEECH, 30)])[0] == SpeechStarted(20 * WINDOW_SAMPLES / SAMPLE_RATE)
    assert segmenter.end_turn() == [], "not while speaking"
    feed(segmenter, [(SILENCE, 6)])  # a pause of 6 windows, below the endpoint's 10
    assert segmenter.trailing_silence_seconds == pytest.approx(6 * 0.032)
    closing = segmenter.closing_audio()
    ended, utterance = segmenter.end_turn()
    assert ended == SpeechEnded(round(50 * WINDOW_SAMPLES / SAMPLE_RATE, 3), "silence")
    assert isinstance(utterance, Utterance) and utterance.reason == "silence"
    # Trailing silence is cut to the 4-window pad, as at the endpoint; the other 2 windows seed the next pre-roll.
    assert window_ids(utterance) == list(range(16, 54))
    np.testing.assert_array_equal(closing, utterance.audio)
    assert segmenter.end_turn() == [], "nothing between utterances"


def test_the_speech_mark_holds_through_a_pause_and_moves_when_speech_resumes() -> None:
    segmenter = UtteranceSegmenter(limits())
    feed(segmenter, [(SILENCE, 20), (SPEECH, 30), (SILENCE, 3)])
    mark = segmenter.speech_mark
    assert mark == (round(16 * WINDOW_SAMPLES / SAMPLE_RATE, 3), round(30 * 0.032, 3))
    feed(segmenter, [(UNSURE, 2), (SILENCE, 2)])  # within Silero's hysteresis: still the same pause
    assert segmenter.speech_mark == mark and segmenter.trailing_silence_seconds == pytest.approx(7 * 0.032)
    feed(segmenter, [(SPEECH, 1), (SILENCE, 1)])
    resumed = segmenter.speech_mark
    assert resumed == (mark[0], round(31 * 0.032, 3)) and segmenter.trailing_silence_seconds == pytest.approx(0.032)
    (utterance,) = feed(segmenter, [(SILENCE, 9)])
    assert (utterance.start, utterance.speech_seconds) == resumed, "the Utterance carries the mark of its last pause"
