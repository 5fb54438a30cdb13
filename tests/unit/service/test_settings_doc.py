"""docs/settings.md and `service.settings.Settings` in step: every field documented with its variable and its
default, and nothing documented that is not a field."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import SecretStr

from service.settings import Settings

DOC = Path(__file__).resolve().parents[3] / "docs" / "settings.md"
ROW = re.compile(r"^\|\s*`(LMSERVE_[A-Z0-9_]+)`\s*\|\s*([^|]*?)\s*\|")


def documented() -> dict[str, str]:
    """{variable: default as written} from the table's rows."""
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = ROW.match(line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} is documented twice"
            rows[m.group(1)] = m.group(2)
    return rows


def as_written(value: object) -> str:
    """A field's default as the table writes it: in backticks, or `unset` for None."""
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def test_every_setting_is_documented_with_its_default_and_nothing_else() -> None:
    rows = documented()
    fields = {f"LMSERVE_{name.upper()}": info.default for name, info in Settings.model_fields.items()}
    assert sorted(set(fields) - set(rows)) == [], "settings missing from docs/settings.md"
    assert sorted(set(rows) - set(fields)) == [], "docs/settings.md documents settings that do not exist"
    wrong = {
        name: (rows[name], as_written(default)) for name, default in fields.items() if rows[name] != as_written(default)
    }
    assert wrong == {}, "documented default != Settings default: {variable: (documented, actual)}"
