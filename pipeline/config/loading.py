"""Reading a job: a TOML file, flags and keyword arguments -> one validated `JobConfig`.

Precedence is flag > file > default. An error names where the bad value came from (a
file's `[section] key`, a flag, or a keyword argument of the Python API).
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from pipeline.config.checks import SettingError
from pipeline.config.flags import FLAG_SETTINGS
from pipeline.config.labels import as_json_schema_setting, load_schema_file
from pipeline.config.prices import load_price_table, parse_price_entries
from pipeline.config.settings import (
    DedupeConfig,
    EndpointConfig,
    JobConfig,
    LimitsConfig,
    OutputConfig,
    RequestConfig,
)
from pipeline.errors import UsageError

SECTIONS: dict[str, type] = {
    "endpoint": EndpointConfig,
    "request": RequestConfig,
    "limits": LimitsConfig,
    "output": OutputConfig,
    "dedupe": DedupeConfig,
}


# CLI flag -> (section, key). Flags override the file; the file overrides the defaults.
def setting_key(name: str) -> tuple[str, str]:
    """(section, key) of a setting named as a flag (`max_cost`) or as in the TOML
    (`max_cost_usd`, `top_p`): what the Python API's keyword arguments may be."""
    if name in FLAG_SETTINGS:
        return FLAG_SETTINGS[name]
    for section, cls in SECTIONS.items():
        if name in {f.name for f in fields(cls)}:
            return section, name
    known = sorted({*FLAG_SETTINGS, *(f.name for c in SECTIONS.values() for f in fields(c))})
    raise _unknown_key("setting", name, known)


def _unknown_key(where: str, key: str, allowed: list[str]) -> UsageError:
    near = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    return UsageError(f"{where} {key}: unknown key; {hint}allowed: {', '.join(allowed)}")


def _build_section(
    name: str, raw: Mapping[str, Any], origins: Mapping[str, str], source: str
) -> object:
    cls = SECTIONS[name]
    allowed = [f.name for f in fields(cls)]
    for key in raw:
        if key not in allowed:
            raise _unknown_key(f"{source}: [{name}]", key, allowed)
    try:
        return cls(**raw)
    except SettingError as exc:
        # Name the flag when the bad value came from one, else the file.
        raise UsageError(f"{origins.get(exc.key, source)}: {exc}") from None


def load_config(
    path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    prices_path: Path | None = None,
) -> JobConfig:
    """Read a job config (or none: defaults), apply flag overrides, validate everything."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise UsageError(f"config {path}: no such file") from None
        except OSError as exc:
            raise UsageError(f"config {path}: cannot read ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"config {path}: not valid TOML ({exc})") from None

    sections = [*SECTIONS, "prices", "compare"]  # [compare] is `caption compare`'s
    for key, value in raw.items():
        if key not in sections:
            raise _unknown_key(f"{source}:", key, sections)
        if not isinstance(value, dict):
            raise UsageError(f"{source}: {key} = {value!r}: must be a [{key}] table")

    merged: dict[str, dict[str, Any]] = {name: dict(raw.get(name, {})) for name in SECTIONS}
    origins: dict[str, dict[str, str]] = {name: {} for name in SECTIONS}
    for flag, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = setting_key(flag)
        merged[section][key] = value
        origins[section][key] = (
            "--" + flag.replace("_", "-") if flag in FLAG_SETTINGS else f"{flag}="
        )

    _unfold_response_format(merged["request"])
    schema = merged["request"].get("json_schema")
    if isinstance(schema, str | Path):
        # Relative to the config file when named there, else to the working folder.
        named_in_file = "json_schema" not in origins["request"] and path is not None
        where = Path(path).parent / schema if named_in_file and path else Path(schema)
        merged["request"]["json_schema"] = load_schema_file(where)
    elif isinstance(schema, dict):
        merged["request"]["json_schema"] = as_json_schema_setting(schema)
    built = {name: _build_section(name, merged[name], origins[name], source) for name in SECTIONS}
    prices = load_price_table(prices_path)
    if "prices" in raw:
        prices = prices.with_overrides(parse_price_entries(raw["prices"], source, table="prices"))
    try:
        return JobConfig(prices=prices, **built)  # type: ignore[arg-type]
    except UsageError as exc:
        origin = origins["request"].get("model", source)
        raise UsageError(f"{origin}: {exc}") from None


def _unfold_response_format(request: dict[str, Any]) -> None:
    """`response_format` as OpenAI's own request body has it (a table: `type`, and for
    `json_schema` the `json_schema` object) means the same as the two settings."""
    given = request.get("response_format")
    if not isinstance(given, dict):
        return
    request["response_format"] = given.get("type")
    if "json_schema" in given:
        if "json_schema" in request:
            raise UsageError(
                "[request] json_schema is given twice: as a setting and inside "
                "response_format; keep one"
            )
        request["json_schema"] = given["json_schema"]
