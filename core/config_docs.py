"""The configuration reference, generated from the Settings model so it cannot drift.

    python -m core.config_docs                    # print the Markdown table
    python -m core.config_docs --check README.md  # exit 1 when README's table differs from the model
    python -m core.config_docs --write README.md  # rewrite README's table from the model

One row per key: its path as written in YAML (`stt.max_buffer_seconds`), its type and range, its
built-in default and the one-line docstring under the field in core/config.py. In README.md the
table lives between `<!-- config-table:start -->` and `<!-- config-table:end -->`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from core.config import Settings

START_MARKER = "<!-- config-table:start -->"
END_MARKER = "<!-- config-table:end -->"
GENERATED_NOTE = (
    "<!-- generated from core/config.py by `python -m core.config_docs --write README.md`; do not edit by hand -->"
)

EXIT_OK = 0
EXIT_DIFFERS = 1
EXIT_NO_TABLE = 2


@dataclass(frozen=True)
class Row:
    key: str
    """Key path as written in YAML, e.g. `stt.max_buffer_seconds`."""
    type: str
    default: str
    description: str


def _section_model(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(str(choice) for choice in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        args = typing.get_args(annotation)
        parts = [_type_name(arg) for arg in args if arg is not type(None)]
        return " \\| ".join(parts + (["null"] if type(None) in args else []))
    if origin in (list, tuple, set):
        inner = ", ".join(_type_name(arg) for arg in typing.get_args(annotation))
        return f"list[{inner}]" if inner else "list"
    if origin is dict:
        return "mapping"
    if annotation is SecretStr:
        return "secret"
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _number(value: Any) -> str:
    return json.dumps(value)


def _range(field: FieldInfo) -> str:
    low = high = ""
    for constraint in field.metadata:
        if isinstance(constraint, annotated_types.Ge):
            low = f"{_number(constraint.ge)} ≤ "
        elif isinstance(constraint, annotated_types.Gt):
            low = f"{_number(constraint.gt)} < "
        elif isinstance(constraint, annotated_types.Le):
            high = f" ≤ {_number(constraint.le)}"
        elif isinstance(constraint, annotated_types.Lt):
            high = f" < {_number(constraint.lt)}"
    return f"{low}x{high}" if low or high else ""


def _default(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return None if field.default is PydanticUndefined else field.default


def _code(text: str) -> str:
    text = text.replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _render_default(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if value is None:
        return _code("null")
    if isinstance(value, bool):
        return _code("true" if value else "false")
    if isinstance(value, Path):
        return _code(value.as_posix())
    if isinstance(value, str):
        return _code(value) if value else '`""`'
    return _code(json.dumps(value, ensure_ascii=False))


def _description(field: FieldInfo) -> str:
    return re.sub(r"\s+", " ", field.description or "").strip().replace("|", "\\|")


def _walk(model: type[BaseModel], prefix: str) -> Iterator[Row]:
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        key = f"{prefix}{field.alias or name}"
        section = _section_model(field.annotation)
        if section is not None:
            yield from _walk(section, f"{key}.")
            continue
        kind = _type_name(field.annotation)
        bounds = _range(field)
        yield Row(
            key=key,
            type=f"{kind}, {bounds}" if bounds else kind,
            default=_render_default(_default(field)),
            description=_description(field),
        )


def rows(model: type[BaseModel] = Settings) -> list[Row]:
    """Every configuration key of the model, in the order the model declares them."""
    return list(_walk(model, ""))


def render_table(model: type[BaseModel] = Settings) -> str:
    lines = ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
    lines += [f"| `{row.key}` | {row.type} | {row.default} | {row.description} |" for row in rows(model)]
    return "\n".join(lines)


def render_block(model: type[BaseModel] = Settings) -> str:
    """What stands between the markers: the note that it is generated, then the table."""
    return f"{GENERATED_NOTE}\n\n{render_table(model)}"


def _split(text: str) -> tuple[str, str, str] | None:
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start < 0 or end < start:
        return None
    head_end = start + len(START_MARKER)
    return text[:head_end], text[head_end:end], text[end:]


def check(readme: Path) -> list[str]:
    """Problems with README's table: empty when it matches the model (a unified diff otherwise)."""
    parts = _split(readme.read_text(encoding="utf-8"))
    if parts is None:
        return [f"{readme}: no {START_MARKER} ... {END_MARKER} block"]
    current, expected = parts[1].strip("\n"), render_block()
    if current == expected:
        return []
    diff = difflib.unified_diff(
        current.splitlines(), expected.splitlines(), f"{readme} (now)", "core/config.py (expected)", lineterm=""
    )
    return [
        f"{readme}: the configuration table differs from core/config.py; "
        f"run python -m core.config_docs --write {readme}",
        *diff,
    ]


def write(readme: Path) -> bool:
    """Rewrite README's table from the model; True when the file changed."""
    text = readme.read_text(encoding="utf-8")
    parts = _split(text)
    if parts is None:
        raise ValueError(f"{readme}: no {START_MARKER} ... {END_MARKER} block")
    updated = f"{parts[0]}\n{render_block()}\n{parts[2]}"
    if updated == text:
        return False
    readme.write_text(updated, encoding="utf-8")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the configuration reference from the Settings model.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", metavar="README", type=Path, help="exit 1 if README's table differs from the model")
    group.add_argument("--write", metavar="README", type=Path, help="rewrite README's table from the model")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.check)
        for line in problems:
            print(line, file=sys.stderr)
        if not problems:
            return EXIT_OK
        return EXIT_NO_TABLE if len(problems) == 1 and "no " + START_MARKER in problems[0] else EXIT_DIFFERS
    if args.write:
        try:
            changed = write(args.write)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return EXIT_NO_TABLE
        print(f"{args.write}: {'updated' if changed else 'already up to date'}")
        return EXIT_OK
    print(render_table())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
