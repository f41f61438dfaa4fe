"""structlog set-up shared by both services.

Every line, ours and the libraries' (uvicorn, faster-whisper, httpx), goes through one formatter:
readable console lines in development, one JSON object per line when `logging.json` is true.
Context bound with `structlog.contextvars` (session or request ids) is merged into each line.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from structlog.types import EventDict, Processor

from core.config import LoggingSettings

_HANDLER_NAME = "voice-assistant"

# Libraries that log every call at INFO; an operator wants them only when debugging.
_CHATTY_LOGGERS = ("faster_whisper", "httpx", "httpcore", "huggingface_hub", "onnxruntime")


def _add_service(service: str) -> Processor:
    def processor(_: Any, __: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", service)
        # uvicorn attaches an ANSI-coloured copy of each message; it is noise in every renderer.
        event_dict.pop("color_message", None)
        return event_dict

    return processor


def configure_logging(settings: LoggingSettings, service: str) -> None:
    """Route structlog and the standard logging module through one renderer; idempotent."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        # After ExtraAdder, which would copy uvicorn's color_message back in.
        _add_service(service),
    ]
    renderer: Processor
    if settings.writes_json:
        renderer = structlog.processors.JSONRenderer()
        # Locals stay out of tracebacks: they can hold audio buffers and API keys.
        shared = [
            *shared,
            structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False)),
        ]
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    handler.name = _HANDLER_NAME
    root = logging.getLogger()
    # Replace only our own handler: pytest's capture or an embedding program's handlers stay.
    root.handlers[:] = [h for h in root.handlers if h.name != _HANDLER_NAME] + [handler]
    # Library warnings (deprecations in huggingface_hub, onnxruntime) become structured lines too.
    logging.captureWarnings(True)
    level = getattr(logging, settings.level.upper())
    root.setLevel(level)

    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        library_logger = logging.getLogger(name)
        library_logger.handlers[:] = []
        library_logger.propagate = True
    # core.http.RequestContextMiddleware logs each request with its id; uvicorn's own line would repeat it.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(level if level <= logging.DEBUG else logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
