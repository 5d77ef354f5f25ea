"""Structured labels: a JSON Schema's Arrow type, and each answer checked and parsed into it.

A job with `response_format = "json_schema"` gets a typed `parsed` column:

    object -> struct of its properties (a property not required may be null)
    array  -> list            string -> string (an enum too)
    integer -> int64          number -> float64          boolean -> bool

A part of the schema outside these (`anyOf`, `$ref`, an object without `properties`) is
kept as its JSON text, a string. With `json_object`, `parsed` is the answer's JSON text,
once it is known to parse. Text jobs have no `parsed` column.

An answer that does not parse or does not fit, or that was cut off (`finish_reason`
`length` or `content_filter`), is an error row that keeps its text and cost:
`invalid_output` or `truncated`. It was paid for, so it is not retried on its own;
`--retry-errors` sends it again.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from pipeline.errors import UsageError
from pipeline.records import PARSED, RESULT_SCHEMA

STRUCTURED = ("json_object", "json_schema")
CUT_OFF = {"length": "max_tokens", "content_filter": "the content filter"}
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Parquet refuses to read a schema nested past 100 levels, and an array takes three of
# them (LIST, its repeated group, the element): 24 levels of objects and arrays stay
# well inside, and deeper label schemas are not seen in practice.
MAX_SCHEMA_DEPTH = 24
# An answer is parsed only this large and this deep; past that it is `invalid_output`.
MAX_ANSWER_BYTES = 4 << 20
MAX_ANSWER_DEPTH = 64
# How much of a value an error message quotes.
QUOTE_CHARS = 60


class Mismatch(ValueError):
    """An answer that does not fit the schema; says where (`$.labels[2]`) and how."""


# -- the schema ---------------------------------------------------------------------------


def load_schema_file(path: Path) -> dict[str, Any]:
    """A JSON Schema file as OpenAI's `json_schema` object (`name`, `strict`, `schema`).
    The file holds either that object or a bare schema (named after the file)."""
    try:
        data = orjson.loads(Path(path).read_bytes())  # refuses nesting past 1,024 levels
    except FileNotFoundError:
        raise UsageError(f"schema {path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"schema {path}: not readable JSON ({exc})") from None
    name = re.sub(r"[^A-Za-z0-9_-]", "_", Path(path).stem)[:64] or "labels"
    return as_json_schema_setting(data, name)


def as_json_schema_setting(data: Any, name: str = "labels") -> Any:
    """OpenAI's `json_schema` object as it is, or a bare JSON Schema wrapped in one (a
    file's, a TOML table's or the Python API's `json_schema=` dict alike). A dict with
    `name`, `strict` or `schema` at the top is meant as OpenAI's object (none of them is a
    JSON Schema keyword): it is left for the check to name what it lacks."""
    if isinstance(data, dict) and {"schema", "name", "strict"} & data.keys():
        return data
    return {"name": name, "strict": strict_fits(data), "schema": data}


def strict_fits(schema: Any) -> bool:
    """Whether OpenAI's strict mode takes `schema` as it is: every object lists all its
    properties as required and sets `additionalProperties: false` (strict mode refuses
    the request otherwise). A bare schema that does not fit is sent without `strict`:
    the answer is still checked here, against the schema as written."""
    if isinstance(schema, list):
        return all(strict_fits(s) for s in schema)
    if not isinstance(schema, dict):
        return True
    props = schema.get("properties")
    if isinstance(props, dict):
        if schema.get("additionalProperties") is not False:
            return False
        if set(schema.get("required") or []) != set(props):
            return False
    return all(strict_fits(v) for k, v in schema.items() if k != "enum" and k != "const")


def check_json_schema(value: Any) -> str | None:
    """What is wrong with a `json_schema` setting, or None."""
    if not isinstance(value, dict) or not isinstance(value.get("schema"), dict):
        return "an object with a 'schema' (a JSON Schema object), 'name' and optional 'strict'"
    if not isinstance(value.get("name"), str) or not _NAME.fullmatch(value["name"]):
        return "an object whose 'name' is 1 to 64 letters, digits, _ or -"
    if not isinstance(value.get("strict", True), bool):
        return "an object whose 'strict' is true or false"
    schema = value["schema"]
    problem = _shape_problem(schema)
    if problem is not None:
        return problem
    from jsonschema import Draft202012Validator, SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in exc.path)
        return f"a valid JSON Schema: at $schema{where}, {_quote(exc.instance)} {_reason(exc)}"
    try:
        arrow_type(schema)
    except Mismatch as exc:
        return f"a schema this tool can type: {exc}"
    return None


def _reason(exc: Any) -> str:
    """The validator's complaint without the whole offending value in it."""
    if exc.validator == "type":
        return f"is not of type {exc.validator_value!r}"
    if exc.validator == "minItems":
        return f"should have at least {exc.validator_value} item(s)"
    if exc.validator == "uniqueItems":
        return "has repeated items"
    return f"fails the meta-schema's {exc.validator!r} rule"


def _quote(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 3] + "..."


def _shape_problem(schema: Any) -> str | None:
    """Nesting that Parquet cannot store, or a `$ref` back to an enclosing schema
    (recursion): refused before anything is sent. Walked without recursion, so a schema
    nested thousands deep is refused, not a RecursionError."""
    stack: list[tuple[Any, str, int]] = [(schema, "#", 0)]
    while stack:
        node, pointer, depth = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and (ref == "#" or pointer.startswith(ref.rstrip("/") + "/")):
                return f"a schema without recursion: {pointer} refers back to {ref}"
            typed = isinstance(node.get("properties"), dict) or "items" in node
            if typed and depth + 1 > MAX_SCHEMA_DEPTH:
                return (
                    f"a schema nested at most {MAX_SCHEMA_DEPTH} levels of objects and arrays "
                    f"(Parquet cannot store deeper columns); {pointer} is deeper"
                )
            for key, sub in node.items():
                stack.append((sub, f"{pointer}/{key}", depth + typed))
        elif isinstance(node, list):
            if len(pointer) > 20_000:
                return "a schema nested less deeply (it has lists inside lists without end)"
            stack.extend((sub, f"{pointer}/{i}", depth) for i, sub in enumerate(node))
    return None


def _types(schema: dict[str, Any]) -> tuple[str | None, bool]:
    """(the one non-null type, whether null is allowed)."""
    kind = schema.get("type")
    if kind is None and "enum" in schema:
        values = [v for v in schema["enum"] if v is not None]
        kind = "string" if all(isinstance(v, str) for v in values) else None
        return kind, None in schema["enum"]
    if isinstance(kind, list):
        others = [k for k in kind if k != "null"]
        return (others[0] if len(others) == 1 else None), "null" in kind
    return (kind if isinstance(kind, str) else None), False


def _is_struct(schema: dict[str, Any]) -> bool:
    props = schema.get("properties")
    return isinstance(props, dict) and bool(props)


def arrow_type(schema: Any) -> pa.DataType:
    """The Arrow type of a value that fits `schema`."""
    if not isinstance(schema, dict):
        raise Mismatch(f"a schema must be an object, not {json.dumps(schema)[:40]}")
    kind, _ = _types(schema)
    if kind == "object" and _is_struct(schema):
        # Every field is nullable to Arrow: an error row has no `parsed` at all, and
        # Arrow refuses a null struct whose fields are marked required. A required
        # property is never null in an ok row: `as_column_value` checks it.
        return pa.struct(
            [pa.field(name, arrow_type(sub)) for name, sub in schema["properties"].items()]
        )
    if kind == "array":
        items = schema.get("items")
        return pa.list_(arrow_type(items) if isinstance(items, dict) else pa.string())
    return {"integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_()}.get(
        kind or "", pa.string()
    )


def parsed_type(
    response_format: str | None, json_schema: dict[str, Any] | None
) -> pa.DataType | None:
    if response_format == "json_schema" and json_schema is not None:
        return arrow_type(json_schema["schema"])
    if response_format == "json_object":
        return pa.string()
    return None


def result_schema(job: dict[str, Any] | None) -> pa.Schema:
    """The shards' schema for a job (run.json's definition): the result columns, and
    `parsed` when the job asks for JSON."""
    job = job or {}
    kind = parsed_type(job.get("response_format"), job.get("json_schema"))
    return RESULT_SCHEMA if kind is None else RESULT_SCHEMA.append(pa.field(PARSED, kind))


# -- an answer ----------------------------------------------------------------------------


def as_column_value(value: Any, schema: dict[str, Any], where: str = "$") -> Any:
    """`value` as the Python value of `arrow_type(schema)`, or Mismatch."""
    kind, nullable = _types(schema)
    if value is None:
        if nullable or kind == "null":
            return None
        raise Mismatch(f"{where} is null")
    if "enum" in schema and value not in schema["enum"]:
        raise Mismatch(f"{where} is {_quote(value)}, not one of the schema's enum")
    if kind == "object" and _is_struct(schema):
        if not isinstance(value, dict):
            raise Mismatch(f"{where} is not an object")
        props: dict[str, Any] = schema["properties"]
        missing = [k for k in schema.get("required") or [] if k not in value]
        if missing:
            raise Mismatch(f"{where} lacks {', '.join(missing)}")
        extra = [k for k in value if k not in props]
        if extra and schema.get("additionalProperties") is False:
            raise Mismatch(f"{where} has {', '.join(extra)}, which the schema does not allow")
        required = set(schema.get("required") or [])
        return {
            k: None
            if value.get(k) is None and k not in required
            else as_column_value(value.get(k), sub, f"{where}.{k}")
            for k, sub in props.items()
        }
    if kind == "array":
        if not isinstance(value, list):
            raise Mismatch(f"{where} is not an array")
        items = schema.get("items")
        if not isinstance(items, dict):
            return [json.dumps(v) for v in value]
        return [as_column_value(v, items, f"{where}[{i}]") for i, v in enumerate(value)]
    if kind == "string":
        if not isinstance(value, str):
            raise Mismatch(f"{where} is not a string")
        return value
    if kind == "integer":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or abs(value) >= 2**63:
            raise Mismatch(f"{where} is not a 64-bit integer")
        return value
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Mismatch(f"{where} is not a number")
        return float(value)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise Mismatch(f"{where} is not true or false")
        return value
    return json.dumps(value, ensure_ascii=False)  # outside the typed subset: its JSON text


def _depth_over(value: Any, limit: int) -> bool:
    """Whether `value` nests more than `limit` arrays and objects deep (no recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > limit:
                return True
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return False


class Labels:
    """The check every answer of a structured job goes through (`engine/captioner.py`)."""

    def __init__(self, response_format: str | None, json_schema: dict[str, Any] | None) -> None:
        self.response_format = response_format
        self.schema = json_schema["schema"] if json_schema else None

    @classmethod
    def for_job(
        cls, response_format: str | None, json_schema: dict[str, Any] | None
    ) -> Labels | None:
        return cls(response_format, json_schema) if response_format in STRUCTURED else None

    def parse(
        self, text: str | None, finish_reason: str | None, refusal: str | None = None
    ) -> tuple[Any, str | None, str | None]:
        """(the `parsed` value, error kind, error message) of the first choice. A refusal
        is `refused` (its text is in the `refusal` column), not an answer that is not JSON."""
        if refusal:
            return None, "refused", f"the model refused: {refusal[:200]}"
        if text is None and finish_reason not in CUT_OFF:
            return None, "invalid_output", "the answer has no text (null content, or a tool call)"
        if finish_reason in CUT_OFF:
            return (
                None,
                "truncated",
                (
                    f"the answer was cut off by {CUT_OFF[finish_reason]} "
                    f"(finish_reason {finish_reason}); its text is kept in `caption`"
                ),
            )
        raw = (text or "").encode("utf-8", "surrogatepass")
        if len(raw) > MAX_ANSWER_BYTES:
            return None, "invalid_output", f"the answer is over {MAX_ANSWER_BYTES} bytes of JSON"
        try:
            # orjson: strict JSON (no NaN), and it refuses nesting past 1,024 levels
            # where json would raise RecursionError.
            value = orjson.loads(raw)
        except ValueError as exc:
            return None, "invalid_output", f"the answer is not JSON ({str(exc)[:200]})"
        if _depth_over(value, MAX_ANSWER_DEPTH):
            return None, "invalid_output", f"the answer is nested over {MAX_ANSWER_DEPTH} levels"
        if self.schema is None:
            return (text or "").strip(), None, None  # json_object: the text, known to parse
        try:
            return as_column_value(value, self.schema), None, None
        except Mismatch as exc:
            return None, "invalid_output", f"the answer does not fit the schema: {exc}"
        except RecursionError:
            return None, "invalid_output", "the answer is nested too deeply"


# -- a value that fits, for the fake endpoint -----------------------------------------------


def sample_value(schema: dict[str, Any], seed: str, where: str = "$") -> Any:
    """A value that fits `schema`, chosen deterministically from `seed` (an image's hash)."""
    h = int(hashlib.sha256(f"{seed}{where}".encode()).hexdigest()[:8], 16)
    if schema.get("enum"):
        return schema["enum"][h % len(schema["enum"])]
    kind, _ = _types(schema)
    if kind == "object" and _is_struct(schema):
        return {
            k: sample_value(sub, seed, f"{where}.{k}") for k, sub in schema["properties"].items()
        }
    if kind == "array":
        given = schema.get("items")
        items: dict[str, Any] = given if isinstance(given, dict) else {"type": "string"}
        return [sample_value(items, seed, f"{where}[{i}]") for i in range(1 + h % 3)]
    if kind == "integer":
        return h % 100
    if kind == "number":
        return (h % 1000) / 10
    if kind == "boolean":
        return h % 2 == 0
    if kind == "object":
        return {}
    return f"fake {where.rsplit('.', 1)[-1]} {seed[:8]}"
