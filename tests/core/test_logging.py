"""core.logging: one renderer for structlog and stdlib lines, JSON or console, with bound context.

configure_logging() builds a StreamHandler on the *current* sys.stderr, so every test calls it
after capsys has replaced sys.stderr; the `restore_logging` fixture puts the root logger, the
library loggers and structlog back as they were, so no other test sees our handler.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
import structlog

from core.config import LoggingSettings
from core.logging import _CHATTY_LOGGERS, configure_logging, get_logger

_TOUCHED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", *_CHATTY_LOGGERS)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    saved_loggers = {
        name: (lg.handlers[:], lg.level, lg.propagate)
        for name in _TOUCHED_LOGGERS
        for lg in [logging.getLogger(name)]
    }
    saved_structlog = structlog.get_config()
    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()
    structlog.configure(**saved_structlog)
    root.handlers[:], root.level = saved_root[0], saved_root[1]
    for name, (handlers, level, propagate) in saved_loggers.items():
        lg = logging.getLogger(name)
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


def json_lines(err: str) -> list[dict]:
    """Every non-empty stderr line must be one JSON object."""
    lines = [line for line in err.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


# --- JSON mode --------------------------------------------------------------------------------


def test_structlog_and_stdlib_lines_are_one_json_object_each(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggingSettings(json=True), "stt")

    get_logger("stt.server").info("model_loaded", device="cpu", seconds=1.5)
    logging.getLogger("uvicorn.error").info("Uvicorn running on %s", "http://127.0.0.1:8010")

    records = json_lines(capsys.readouterr().err)
    assert len(records) == 2
    ours, uvicorn = records

    assert ours["event"] == "model_loaded"
    assert ours["level"] == "info"
    assert ours["service"] == "stt"
    assert ours["logger"] == "stt.server"
    assert ours["device"] == "cpu"
    assert ours["seconds"] == 1.5

    assert uvicorn["event"] == "Uvicorn running on http://127.0.0.1:8010"
    assert uvicorn["level"] == "info"
    assert uvicorn["service"] == "stt"
    assert uvicorn["logger"] == "uvicorn.error"

    for record in records:
        stamp = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
        assert stamp.utcoffset() == timedelta(0)
        assert abs(datetime.now(timezone.utc) - stamp) < timedelta(minutes=5)


def test_bound_contextvars_appear_in_both_kinds_of_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggingSettings(json=True), "tts")
    structlog.contextvars.bind_contextvars(session_id="abc")
    try:
        get_logger("tts").info("utterance", audio_seconds=2.0)
        logging.getLogger("uvicorn.error").warning("slow client")
    finally:
        structlog.contextvars.clear_contextvars()
    get_logger("tts").info("after_clear")

    first, second, third = json_lines(capsys.readouterr().err)
    assert first["session_id"] == "abc"
    assert first["service"] == "tts"
    assert second["session_id"] == "abc"
    assert second["level"] == "warning"
    assert "session_id" not in third


def test_event_keys_win_over_the_service_default(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggingSettings(json=True), "stt")
    get_logger("x").info("proxied", service="llm")
    (record,) = json_lines(capsys.readouterr().err)
    assert record["service"] == "llm"


def test_exception_in_json_mode_has_type_but_no_locals(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggingSettings(json=True), "stt")
    log = get_logger("stt.engine")

    def fail() -> None:
        api_key = "sk-very-secret-value"  # noqa: F841 - a local that must not be logged
        raise RuntimeError("cuda broke")

    try:
        fail()
    except RuntimeError:
        log.exception("transcribe_failed")
        logging.getLogger("uvicorn.error").exception("ASGI callable failed")

    err = capsys.readouterr().err
    assert "sk-very-secret-value" not in err
    ours, stdlib = json_lines(err)
    for record in (ours, stdlib):
        assert record["level"] == "error"
        text = json.dumps(record["exception"])
        assert "RuntimeError" in text
        assert "cuda broke" in text
        assert '"locals"' not in text
    assert ours["event"] == "transcribe_failed"
    assert stdlib["event"] == "ASGI callable failed"
    # The dict transformer gives structured frames, not a preformatted string.
    assert ours["exception"][0]["exc_type"] == "RuntimeError"
    assert ours["exception"][0]["frames"][-1]["name"] == "fail"


@pytest.mark.parametrize("json_logs", [True, False], ids=["json", "console"])
def test_uvicorn_color_message_is_dropped(capsys: pytest.CaptureFixture[str], json_logs: bool) -> None:
    configure_logging(LoggingSettings(json=json_logs), "stt")
    logging.getLogger("uvicorn.error").info(
        "Started server process [%d]",
        42,
        extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"},
    )
    err = capsys.readouterr().err
    assert "Started server process [42]" in err
    assert "color_message" not in err
    assert "\x1b[" not in err
    if json_logs:
        (record,) = json_lines(err)
        assert record["event"] == "Started server process [42]"
        assert "color_message" not in record


def test_other_stdlib_extras_are_kept(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggingSettings(json=True), "stt")
    logging.getLogger("stt.vad").info("window", extra={"probability": 0.75})
    (record,) = json_lines(capsys.readouterr().err)
    assert record["probability"] == 0.75


def test_uvicorn_access_info_is_suppressed(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggingSettings(json=True, level="debug"), "tts")
    access = logging.getLogger("uvicorn.access")
    access.info('127.0.0.1:5000 - "GET /health HTTP/1.1" 200')
    access.warning("access log problem")
    (record,) = json_lines(capsys.readouterr().err)
    assert record["event"] == "access log problem"
    assert record["logger"] == "uvicorn.access"


def test_uvicorn_handlers_are_removed_so_lines_are_not_doubled(capsys: pytest.CaptureFixture[str]) -> None:
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_error.addHandler(logging.StreamHandler())  # what uvicorn's own dictConfig installs
    uvicorn_error.propagate = False
    configure_logging(LoggingSettings(json=True), "stt")

    uvicorn_error.info("Application startup complete.")

    (record,) = json_lines(capsys.readouterr().err)
    assert record["event"] == "Application startup complete."
    assert uvicorn_error.handlers == []
    assert uvicorn_error.propagate is True


def test_configure_logging_is_idempotent(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggingSettings(json=True), "stt")
    configure_logging(LoggingSettings(json=True), "stt")
    get_logger("x").info("once")
    logging.getLogger("y").info("once too")
    records = json_lines(capsys.readouterr().err)
    assert [r["event"] for r in records] == ["once", "once too"]
    ours = [h for h in logging.getLogger().handlers if h.name == "voice-assistant"]
    assert len(ours) == 1, "a second call replaces our handler instead of adding one"


def test_foreign_handlers_are_kept() -> None:
    foreign = logging.NullHandler()
    logging.getLogger().addHandler(foreign)
    try:
        configure_logging(LoggingSettings(), "stt")
        assert foreign in logging.getLogger().handlers
    finally:
        logging.getLogger().removeHandler(foreign)


# --- levels -----------------------------------------------------------------------------------


def test_level_warning_drops_info(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggingSettings(json=True, level="warning"), "stt")
    log = get_logger("stt")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    logging.getLogger("uvicorn.error").info("stdlib info")
    logging.getLogger("uvicorn.error").critical("stdlib critical")

    records = json_lines(capsys.readouterr().err)
    assert [(r["event"], r["level"]) for r in records] == [
        ("w", "warning"),
        ("e", "error"),
        ("stdlib critical", "critical"),
    ]
    assert logging.getLogger().level == logging.WARNING


def test_level_debug_lets_debug_through(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggingSettings(json=True, level="debug"), "stt")
    get_logger("stt").debug("vad_window", probability=0.1)
    (record,) = json_lines(capsys.readouterr().err)
    assert record["level"] == "debug"
    assert record["probability"] == 0.1


@pytest.mark.parametrize(("level", "chatty_logged"), [("info", False), ("debug", True)])
def test_chatty_libraries_only_at_debug(
    capsys: pytest.CaptureFixture[str], level: str, chatty_logged: bool
) -> None:
    configure_logging(LoggingSettings(json=True, level=level), "stt")
    logging.getLogger("httpx").info("HTTP Request: POST /api/chat")
    logging.getLogger("faster_whisper").info("Processing audio with duration 00:02.000")
    logging.getLogger("httpx").warning("retrying")

    events = [r["event"] for r in json_lines(capsys.readouterr().err)]
    if chatty_logged:
        assert events == [
            "HTTP Request: POST /api/chat",
            "Processing audio with duration 00:02.000",
            "retrying",
        ]
    else:
        assert events == ["retrying"]


# --- console mode -----------------------------------------------------------------------------


def test_console_mode_is_readable_not_json(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggingSettings(json=False), "stt")
    structlog.contextvars.bind_contextvars(request_id="r-17")
    get_logger("stt.server").info("model_loaded", device="cpu", compute_type="int8")
    logging.getLogger("uvicorn.error").info("Uvicorn running on %s", "http://127.0.0.1:8010")

    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 2
    ours, uvicorn = lines
    for line in lines:
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)
        # capsys's stderr is not a terminal, so no ANSI colour codes.
        assert "\x1b[" not in line
        assert "service=stt" in line
        assert "request_id=r-17" in line
    assert "model_loaded" in ours
    assert "device=cpu" in ours
    assert "compute_type=int8" in ours
    assert "[info" in ours
    assert "Uvicorn running on http://127.0.0.1:8010" in uvicorn


def test_console_mode_renders_exceptions(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggingSettings(json=False), "tts")
    try:
        raise ValueError("bad voice")
    except ValueError:
        get_logger("tts").exception("synthesis_failed")

    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert "synthesis_failed" in first
    assert "[error" in first
    assert "Traceback (most recent call last):" in err
    assert "ValueError: bad voice" in err
