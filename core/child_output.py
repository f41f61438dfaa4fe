"""A supervised child's output: every line re-emitted through the supervisor's structured logging,
tagged with the service, and the last lines kept for crash reports."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any

import structlog

MAX_LINE_BYTES = 64 * 1024
"""A longer output line is cut here (the rest is dropped), so one runaway line cannot exhaust memory."""
STORED_LINE_CHARS = 1_000
"""Each line kept for a crash report is cut to this many characters."""

_LEVELS = ("debug", "info", "warning", "error", "critical")
# Keys of a child's JSON log line that the supervisor's own processors set again.
_REPLACED_KEYS = ("timestamp", "level", "logger", "event", "service")


def _exception_text(value: Any) -> str:
    """A child's JSON traceback (structlog's dict form) as the text a console reader expects."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        return json.dumps(value)
    parts = []
    for exc in value:
        if not isinstance(exc, dict):
            continue
        lines = ["Traceback (most recent call last):"]
        for frame in exc.get("frames") or []:
            lines.append(f'  File "{frame.get("filename")}", line {frame.get("lineno")}, in {frame.get("name")}')
        lines.append(f"{exc.get('exc_type')}: {exc.get('exc_value')}")
        parts.append("\n".join(lines))
    return "\n\nDuring handling of the above exception, another exception occurred:\n\n".join(reversed(parts))


class OutputRelay:
    """Reads one child's stdout and stderr and re-emits each line."""

    def __init__(self, service: str, json_logs: bool, keep_lines: int) -> None:
        self.service = service
        self.json_logs = json_logs
        self.output: deque[str] = deque(maxlen=keep_lines)

    async def pump(self, stream: asyncio.StreamReader) -> None:
        pending = b""
        skipping = False  # inside an over-long line whose first MAX_LINE_BYTES were already emitted
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                if pending and not skipping:
                    self._line(pending[:MAX_LINE_BYTES])
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not skipping:
                    self._line(line[:MAX_LINE_BYTES])
                skipping = False
            if skipping:
                pending = b""
            elif len(pending) > MAX_LINE_BYTES:
                self._line(pending[:MAX_LINE_BYTES])
                pending, skipping = b"", True

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if not text.strip():
            return
        try:
            fields = json.loads(text) if text.startswith("{") else None
        except ValueError:
            fields = None
        try:
            if isinstance(fields, dict) and "event" in fields:
                self._emit_structured(fields)
                return
        except Exception:  # a line we cannot re-emit is still shown, as it came
            pass
        self.output.append(text[:STORED_LINE_CHARS])
        structlog.stdlib.get_logger(f"{self.service}.output").info(text, service=self.service)

    def _emit_structured(self, fields: dict[str, Any]) -> None:
        level = str(fields.get("level", "info")).lower()
        level = level if level in _LEVELS else "info"
        event = str(fields.get("event", ""))
        logger_name = str(fields.get("logger") or f"{self.service}.output")
        extra = {key: value for key, value in fields.items() if key not in _REPLACED_KEYS}
        if "exception" in extra and not self.json_logs:
            extra["exception"] = _exception_text(extra["exception"])
        summary = " ".join([event, *(f"{key}={value}" for key, value in extra.items() if key != "exception")])
        if "exception" in extra:
            summary += " " + _exception_text(extra["exception"]).splitlines()[-1]
        self.output.append((summary if level == "info" else f"[{level}] {summary}")[:STORED_LINE_CHARS])
        logger = structlog.stdlib.get_logger(logger_name)
        getattr(logger, level)(event, service=self.service, **extra)

    def last_output(self) -> list[str]:
        """The last output lines of the current (or last) process, oldest first."""
        return list(self.output)
