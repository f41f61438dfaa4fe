"""Partial transcript stabilisation (LocalAgreement-2)."""

from __future__ import annotations

from stt.partials import MAX_PACE, ArrivalPace, Partial, PartialStabilizer


def test_the_first_hypothesis_is_all_unstable() -> None:
    assert PartialStabilizer().update("turn on the") == Partial("", "turn on the")


def test_words_two_hypotheses_agree_on_become_stable() -> None:
    stabilizer = PartialStabilizer()
    stabilizer.update("turn on the")
    assert stabilizer.update("turn on the light") == Partial("turn on the", "light")
    assert stabilizer.update("turn on the lights in") == Partial("turn on the", "lights in")
    assert stabilizer.update("turn on the lights in the") == Partial("turn on the lights in", "the")


def test_the_stable_prefix_never_shrinks_when_whisper_revises_itself() -> None:
    stabilizer = PartialStabilizer()
    stabilizer.update("turn on the light")
    stabilizer.update("turn on the light please")
    revised = stabilizer.update("turn off the light please")
    assert revised == Partial("turn on the light", "")
    assert stabilizer.update("turn on the light please now") == Partial("turn on the light", "please now")


def test_an_unchanged_or_empty_hypothesis_gives_nothing_new() -> None:
    stabilizer = PartialStabilizer()
    assert stabilizer.update("") is None
    assert stabilizer.update("hello") == Partial("", "hello")
    assert stabilizer.update("hello") == Partial("hello", "")
    assert stabilizer.update("hello") is None


def test_arrival_pace_tells_speech_heard_live_from_audio_sent_at_once() -> None:
    live, at_once, paced_twice = ArrivalPace(), ArrivalPace(), ArrivalPace()
    assert live.in_real_time(0.5, now=10.0) is False  # the first look only starts the clock
    assert live.in_real_time(1.5, now=11.0) is True  # 1 s of audio in 1 s
    assert live.in_real_time(1.8, now=11.1) is True  # a burst after a stall still averages out
    at_once.in_real_time(0.3, now=10.0)
    assert at_once.in_real_time(3.0, now=10.05) is False  # 2.7 s of audio in 50 ms
    paced_twice.in_real_time(0.0, now=0.0)
    assert paced_twice.in_real_time(MAX_PACE * 1.0, now=1.0) is True  # at most MAX_PACE times faster
    assert paced_twice.in_real_time(MAX_PACE * 1.0 + 0.01, now=1.0) is False
