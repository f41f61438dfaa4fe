"""Partial transcript stabilisation (LocalAgreement-2)."""

from __future__ import annotations

from stt.partials import Partial, PartialStabilizer


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
