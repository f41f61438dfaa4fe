"""The SSML subset parser: every tag, nesting, malformed markup with its place, entities refused."""

from __future__ import annotations

import pytest

from core.errors import InvalidSsml
from core.ssml import Pause, SpokenText, SsmlDocument, looks_like_ssml, parse_ssml

MAX_BREAK_MS = 10_000


def parse(markup: str) -> SsmlDocument:
    return parse_ssml(markup, MAX_BREAK_MS)


def test_plain_speak_is_one_run_with_its_white_space_collapsed() -> None:
    assert parse("<speak>\n  Hello   there,\tfriend.\n</speak>") == SsmlDocument((SpokenText("Hello there, friend."),), ())


@pytest.mark.parametrize(
    ("attributes", "ms"),
    [
        ('time="2s"', 2000),
        ('time="1.5s"', 1500),
        ('time="250ms"', 250),
        ('time=" 40 ms "', 40),
        ('time="0ms"', 0),
        ("", 500),
        ('strength="none"', 0),
        ('strength="x-weak"', 100),
        ('strength="weak"', 250),
        ('strength="medium"', 500),
        ('strength="strong"', 750),
        ('strength="x-strong"', 1000),
        ('time="300ms" strength="x-strong"', 300),
    ],
)
def test_break_is_an_exact_pause(attributes: str, ms: int) -> None:
    document = parse(f"<speak>One.<break {attributes}/>Two.</speak>")
    assert document.items == (SpokenText("One."), Pause(ms), SpokenText("Two."))


def test_breaks_in_a_row_add_up_and_a_leading_break_comes_first() -> None:
    document = parse('<speak><break time="100ms"/>Hi<break time="1s"/><break time="200ms"/></speak>')
    assert document.items == (Pause(100), SpokenText("Hi"), Pause(1200))


@pytest.mark.parametrize(
    ("markup", "message"),
    [
        ('<speak>Hi<break time="2 seconds"/></speak>', "give a time such as '500ms' or '2s'"),
        ('<speak>Hi<break time="-1s"/></speak>', "give a time such as '500ms' or '2s'"),
        ('<speak>Hi<break time="11s"/></speak>', "longer than the 10 s allowed (tts.max_break_s)"),
        ('<speak>Hi<break strength="huge"/></speak>', "allowed strengths are none, x-weak, weak, medium, strong, x-strong"),
        ('<speak><prosody rate="zippy">Hi</prosody></speak>', "a percentage such as '120%'"),
        ('<speak><prosody rate="-100%">Hi</prosody></speak>', "or a positive number"),
    ],
)
def test_bad_values_are_refused_with_what_is_allowed(markup: str, message: str) -> None:
    with pytest.raises(InvalidSsml) as caught:
        parse(markup)
    assert message in caught.value.message
    assert caught.value.code == "invalid_ssml" and caught.value.param == "text"


def test_p_and_s_end_sentences() -> None:
    document = parse("<speak><p><s>First one</s><s>second one</s></p><p>A new paragraph</p></speak>")
    assert document.items == (SpokenText("First one\nsecond one\nA new paragraph"),)
    assert document.text == "First one second one A new paragraph"


@pytest.mark.parametrize(
    ("rate", "factor"),
    [
        ("x-slow", 0.5), ("slow", 0.75), ("medium", 1.0), ("default", 1.0), ("fast", 1.25), ("x-fast", 1.5),
        ("150%", 1.5), ("+20%", 1.2), ("-10%", 0.9), ("1.3", 1.3),
    ],
)
def test_prosody_rate_is_a_speed_factor(rate: str, factor: float) -> None:
    document = parse(f'<speak>Before <prosody rate="{rate}">inside</prosody> after</speak>')
    if factor == 1.0:  # nothing changes: one run
        assert document.items == (SpokenText("Before inside after"),)
    else:
        assert document.items == (SpokenText("Before"), SpokenText("inside", factor), SpokenText("after"))


def test_nested_prosody_rates_multiply_and_voice_nests_inside() -> None:
    markup = (
        '<speak><prosody rate="200%">fast <prosody rate="50%">normal <voice name="other">'
        "other voice</voice></prosody></prosody></speak>"
    )
    assert parse(markup).items == (
        SpokenText("fast", 2.0),
        SpokenText("normal", 1.0),
        SpokenText("other voice", 1.0, "other"),
    )


def test_prosody_pitch_and_volume_are_reported_not_applied() -> None:
    document = parse('<speak><prosody pitch="high" volume="loud">Hi</prosody></speak>')
    assert document.items == (SpokenText("Hi"),)
    assert document.warnings == (
        "<prosody pitch> is not supported: ignored (only rate is)",
        "<prosody volume> is not supported: ignored (only rate is)",
    )


@pytest.mark.parametrize(
    ("markup", "spoken"),
    [
        ('<say-as interpret-as="characters">NASA</say-as>', "N A S A"),
        ('<say-as interpret-as="spell-out">ab c</say-as>', "a b c"),
        ('<say-as interpret-as="digits">2024</say-as>', "2 0 2 4"),
        ('<say-as interpret-as="cardinal">1,234,567</say-as>', "1234567"),
        ('<sub alias="World Wide Web">WWW</sub>', "World Wide Web"),
        ("<emphasis>really</emphasis>", "really"),
        ('<emphasis level="strong">really</emphasis>', "really"),
    ],
)
def test_text_tags_become_the_words_to_say(markup: str, spoken: str) -> None:
    document = parse(f"<speak>Say {markup} now.</speak>")
    assert document.items == (SpokenText(f"Say {spoken} now."),)
    assert document.warnings == ()


def test_unknown_tags_are_spoken_as_their_text_and_reported_once() -> None:
    markup = '<speak>A <audio src="x.wav">beep</audio> and <mark name="m"/>a <lang xml:lang="de">Wort</lang> <audio>two</audio>.</speak>'
    document = parse(markup)
    assert document.items == (SpokenText("A beep and a Wort two."),)
    assert document.warnings == (
        "<audio> is not supported: its text is spoken as it is",
        "<mark> is not supported: its text is spoken as it is",
        "<lang> is not supported: its text is spoken as it is",
    )


def test_unsupported_say_as_and_missing_attributes_are_reported() -> None:
    document = parse('<speak><say-as interpret-as="date">2024-01-02</say-as> <sub>WWW</sub> <voice>x</voice></speak>')
    assert document.items == (SpokenText("2024-01-02 WWW x"),)
    assert document.warnings == (
        (
            "<say-as interpret-as='date'> is not supported (only characters, spell-out, digits, cardinal, number): "
            "its text is spoken"
        ),
        "<sub> without an alias: its text is spoken",
        "<voice> without a name: the voice around it speaks its text",
    )


def test_the_ssml_namespace_and_an_xml_declaration_are_understood() -> None:
    markup = (
        '<?xml version="1.0"?>\n<speak version="1.1" xmlns="http://www.w3.org/2001/10/synthesis" xml:lang="en-US">'
        '<s>Hi</s><break time="1s"/></speak>'
    )
    assert parse(markup).items == (SpokenText("Hi"), Pause(1000))


def test_standard_xml_escapes_are_text() -> None:
    assert parse("<speak>Fish &amp; chips &lt;3</speak>").items == (SpokenText("Fish & chips <3"),)


@pytest.mark.parametrize(
    ("markup", "line", "column", "reason"),
    [
        ("<speak>Hi<break></speak>", 1, 19, "mismatched tag"),
        ("<speak>\n  <p>Hi\n</speak>", 3, 3, "mismatched tag"),
        ("<speak>Hi", 1, 10, "no element found"),
        ("<speak>Fish & chips</speak>", 1, 14, "not well-formed (invalid token)"),
        ("<speak>\n\n  &nbsp;</speak>", 3, 3, "undefined entity"),
        ("<speak>Hi</speak><speak/>", 1, 18, "junk after document element"),
    ],
)
def test_malformed_markup_names_line_and_column(markup: str, line: int, column: int, reason: str) -> None:
    with pytest.raises(InvalidSsml) as caught:
        parse(markup)
    error = caught.value
    assert (error.line, error.column) == (line, column)
    assert error.message == f"the SSML is not well-formed XML: {reason} (line {line}, column {column})"


@pytest.mark.parametrize(
    "markup",
    [
        '<!DOCTYPE speak [<!ENTITY a "ha">]><speak>&a;</speak>',
        '<!DOCTYPE speak [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><speak>&b;</speak>',
        '<!DOCTYPE speak [<!ENTITY x SYSTEM "file:///etc/passwd">]><speak>&x;</speak>',
        '<!DOCTYPE speak SYSTEM "http://127.0.0.1:9/speak.dtd"><speak>Hi</speak>',
    ],
)
def test_dtds_and_entities_are_refused_before_any_expansion(markup: str) -> None:
    with pytest.raises(InvalidSsml) as caught:
        parse(markup)
    assert "declares a DTD or entities" in caught.value.message
    assert (caught.value.line, caught.value.column) == (1, 1)


def test_the_root_must_be_speak() -> None:
    with pytest.raises(InvalidSsml) as caught:
        parse("<p>Hi</p>")
    assert caught.value.message == "SSML must have <speak> as its root element, not <p> (line 1, column 1)"


@pytest.mark.parametrize(
    ("text", "ssml"),
    [("<speak>Hi</speak>", True), ("  \n<speak>Hi</speak>", True), ('<?xml version="1.0"?><speak/>', True),
     ("<!doctype speak><speak/>", True),
     ("Hello <speak>", False), ("<b>Hi</b>", False), ("Hi", False)],
)
def test_what_looks_like_ssml(text: str, ssml: bool) -> None:
    assert looks_like_ssml(text) is ssml
