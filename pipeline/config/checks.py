"""How a setting is checked: each config field carries the Python types it accepts, a
range check, and the words that explain both (`setting`); `validate` checks a section's
fields on construction and raises `SettingError`, naming the section, key and value."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import field, fields
from typing import Any

from pipeline.errors import UsageError


def setting(
    default: Any,
    *,
    kinds: tuple[type, ...],
    allowed: str,
    check: Callable[[Any], bool] = lambda _v: True,
) -> Any:
    """A config field: accepted Python types, a range check, and the text that explains both."""
    return field(default=default, metadata={"kinds": kinds, "allowed": allowed, "check": check})


class SettingError(UsageError):
    """One setting is wrong; carries which, so the caller can say where it came from."""

    def __init__(self, section: str, key: str, value: Any, allowed: str) -> None:
        super().__init__(f"[{section}] {key} = {value!r}: must be {allowed}")
        self.section = section
        self.key = key


def validate(section: str, obj: object) -> None:
    for f in fields(obj):  # type: ignore[arg-type]
        meta = f.metadata
        if not meta:
            continue
        value = getattr(obj, f.name)
        kinds: tuple[type, ...] = meta["kinds"]
        if value is None and type(None) in kinds:
            continue
        # bool is an int in Python; a flag set to `true` must not pass as a number.
        wrong_kind = isinstance(value, bool) and bool not in kinds
        if wrong_kind or not isinstance(value, kinds) or not meta["check"](value):
            raise SettingError(section, f.name, value, meta["allowed"])
