"""JSON Schema -> Gemini's response schema dialect (`responseSchema`: an OpenAPI 3.0
subset with upper-case type names). What the dialect cannot express is refused before
anything is sent, in one line naming the keyword; answers are still checked against the
original JSON Schema, so nothing is lost by the translation."""

from __future__ import annotations

from typing import Any

from pipeline.errors import UsageError

_TYPES = {
    "object": "OBJECT",
    "array": "ARRAY",
    "string": "STRING",
    "integer": "INTEGER",
    "number": "NUMBER",
    "boolean": "BOOLEAN",
}
# Keywords the dialect has under the same name and meaning.
_SAME = (
    "description",
    "format",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "title",
    "pattern",
)
# Keywords that only document or that the dialect does without; answers are still checked.
_DROPPED = ("$schema", "$id", "$comment", "examples", "default", "additionalProperties")


def gemini_schema(schema: Any, path: str = "schema") -> dict[str, Any]:
    if not isinstance(schema, dict):
        raise UsageError(f"[request] json_schema: {path} is not an object; Gemini needs one")
    out: dict[str, Any] = {}
    for key, value in schema.items():
        where = f"{path}.{key}"
        if key == "type":
            out.update(_type(value, where))
        elif key == "properties":
            if not isinstance(value, dict):
                raise UsageError(f"[request] json_schema: {where} is not an object")
            out["properties"] = {k: gemini_schema(v, f"{where}.{k}") for k, v in value.items()}
            out["propertyOrdering"] = list(value)  # answers keep the schema's order
        elif key == "items":
            out["items"] = gemini_schema(value, where)
        elif key in ("anyOf", "oneOf"):
            out.update(_any_of(value, where))
        elif key == "enum":
            out["enum"] = _enum(value, where)
            out.setdefault("type", "STRING")
        elif key == "const":
            out["enum"] = _enum([value], where)
            out.setdefault("type", "STRING")
        elif key == "required":
            out["required"] = list(value)
        elif key in _SAME:
            out[key] = value
        elif key == "additionalProperties" and value not in (False, None):
            raise _refuse(where, "Gemini's response schema has no additionalProperties")
        elif key not in _DROPPED:
            raise _refuse(where, f"Gemini's response schema has no {key!r}")
    return out


def _type(value: Any, where: str) -> dict[str, Any]:
    names = value if isinstance(value, list) else [value]
    nullable = "null" in names
    rest = [n for n in names if n != "null"]
    if len(rest) != 1 or rest[0] not in _TYPES:
        raise _refuse(where, f"Gemini takes one type (and null), not {value!r}")
    out: dict[str, Any] = {"type": _TYPES[rest[0]]}
    if nullable:
        out["nullable"] = True
    return out


def _any_of(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, list) or not value:
        raise UsageError(f"[request] json_schema: {where} must be a non-empty list")
    options = [v for v in value if not (isinstance(v, dict) and v.get("type") == "null")]
    converted = [gemini_schema(v, f"{where}[{i}]") for i, v in enumerate(options)]
    nullable = len(options) < len(value)
    if len(converted) == 1:
        return {**converted[0], **({"nullable": True} if nullable else {})}
    return {"anyOf": converted, **({"nullable": True} if nullable else {})}


def _enum(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _refuse(where, "Gemini's enums hold strings only")
    return list(value)


def _refuse(where: str, why: str) -> UsageError:
    return UsageError(f"[request] json_schema: {where}: {why}; use a gpt: or qwen: model for it")
