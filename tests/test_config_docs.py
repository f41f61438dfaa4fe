"""The configuration reference is generated from the Settings model, and README.md carries it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from core import config_docs
from core.config import PROJECT_ROOT, Settings
from core.config_docs import END_MARKER, START_MARKER, Row, check, render_block, render_table, rows, write


def leaf_values(model: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Every key of a default Settings instance and its value, walked over the instance itself."""
    values: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        if field.exclude:
            continue
        value = getattr(model, name)
        key = f"{prefix}{field.alias or name}"
        if isinstance(value, BaseModel):
            values.update(leaf_values(value, f"{key}."))
        else:
            values[key] = value
    return values


def test_every_key_has_exactly_one_row_in_model_order() -> None:
    expected = list(leaf_values(Settings()))
    assert [row.key for row in rows()] == expected
    assert "config_file" not in expected  # set by load_settings, not configurable
    assert {"stt.max_buffer_seconds", "logging.json", "tts.piper.download", "supervisor.shutdown_grace_s"} <= set(
        expected
    )


def test_every_key_has_a_one_line_description() -> None:
    undocumented = [row.key for row in rows() if not row.description]
    assert undocumented == [], "every Settings field needs a docstring below it"
    assert all("\n" not in row.description for row in rows())


def test_rows_show_type_range_default_and_docstring() -> None:
    by_key = {row.key: row for row in rows()}
    assert by_key["supervisor.shutdown_grace_s"] == Row(
        "supervisor.shutdown_grace_s",
        "float, 0.0 < x ≤ 600.0",
        "`10.0`",
        "After SIGTERM, how long in-flight requests and utterances may take to finish before the services are killed.",
    )
    assert by_key["environment"].type == "development \\| staging \\| production"
    assert by_key["environment"].default == "`development`"
    assert by_key["logging.json"].type == "bool" and by_key["logging.json"].default == "`false`"
    assert by_key["stt.language"].type == "str \\| null" and by_key["stt.language"].default == "`null`"
    assert by_key["stt.port"].type == "int, 1 ≤ x ≤ 65535" and by_key["stt.port"].default == "`8010`"
    assert by_key["stt.models_dir"].type == "path" and by_key["stt.models_dir"].default == "`models/whisper`"
    assert by_key["stt.temperatures"].default == "`[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]`"
    assert by_key["tts.groq.api_key"].type == "secret \\| null"
    stt_doc = Settings.model_fields["stt"].annotation.model_fields["max_buffer_seconds"].description
    assert by_key["stt.max_buffer_seconds"].description == stt_doc


def test_the_table_documents_built_in_defaults_not_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    before = render_table()
    monkeypatch.setenv("STT__PORT", "9999")
    monkeypatch.setenv("CONFIG_PATH", str(PROJECT_ROOT / "config.prod.yaml"))
    assert render_table() == before


def test_table_is_well_formed_markdown() -> None:
    lines = render_table().splitlines()
    assert lines[:2] == ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
    assert len(lines) == len(rows()) + 2
    for line in lines:
        # Four cells: a literal pipe inside a cell is always escaped.
        unescaped = line.replace("\\|", "")
        assert unescaped.startswith("| ") and unescaped.endswith(" |") and unescaped.count("|") == 5, line


def test_readme_table_matches_the_model() -> None:
    assert check(PROJECT_ROOT / "README.md") == [], "run: python -m core.config_docs --write README.md"


def test_check_and_write_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nBefore.\n\n{START_MARKER}\nstale table\n{END_MARKER}\n\nAfter.\n", encoding="utf-8")
    assert config_docs.main(["--check", str(readme)]) == 1
    assert "differs from core/config.py" in capsys.readouterr().err

    assert config_docs.main(["--write", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text == f"# Title\n\nBefore.\n\n{START_MARKER}\n{render_block()}\n{END_MARKER}\n\nAfter.\n"
    assert config_docs.main(["--check", str(readme)]) == 0
    assert write(readme) is False  # already up to date: the file is left alone

    no_markers = tmp_path / "OTHER.md"
    no_markers.write_text("# No table here\n", encoding="utf-8")
    assert config_docs.main(["--check", str(no_markers)]) == 2
    assert config_docs.main(["--write", str(no_markers)]) == 2


def test_printing_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert config_docs.main([]) == 0
    assert capsys.readouterr().out == render_table() + "\n"
