from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.config.labels import (
    Labels,
    Mismatch,
    arrow_type,
    as_column_value,
    load_schema_file,
    sample_value,
)
from pipeline.config.loading import load_config
from pipeline.errors import UsageError

SCHEMA = {
    "type": "object",
    "properties": {
        "subject": {"type": "string", "enum": ["animal", "landscape"]},
        "people": {"type": "integer"},
        "score": {"type": "number"},
        "indoor": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "box": {
            "type": "object",
            "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
            "required": ["x", "y"],
        },
        "note": {"type": ["string", "null"]},
        "free": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
    },
    "required": ["subject", "people", "score", "indoor", "tags"],
    "additionalProperties": False,
}


def test_each_json_schema_type_has_its_arrow_type() -> None:
    kind = arrow_type(SCHEMA)
    assert kind == pa.struct(
        [
            pa.field("subject", pa.string()),
            pa.field("people", pa.int64()),
            pa.field("score", pa.float64()),
            pa.field("indoor", pa.bool_()),
            pa.field("tags", pa.list_(pa.string())),
            pa.field("box", pa.struct([pa.field("x", pa.int64()), pa.field("y", pa.int64())])),
            pa.field("note", pa.string()),
            pa.field("free", pa.string()),  # outside the typed subset: JSON text
        ]
    )


def test_an_answer_that_fits_becomes_the_arrow_value() -> None:
    answer = {
        "subject": "animal",
        "people": 2,
        "score": 3,  # an integer where a number is asked: a float
        "indoor": False,
        "tags": ["cat"],
        "box": {"x": 1, "y": 2},
        "free": 7,
    }
    value = as_column_value(answer, SCHEMA)
    assert value == {**answer, "score": 3.0, "note": None, "free": "7"}
    array = pa.array([value, None], arrow_type(SCHEMA))  # an error row: no value
    assert array.to_pylist()[0]["box"] == {"x": 1, "y": 2}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"subject": "city"}, r"\$.subject is \"city\", not one of"),
        ({"people": 1.5}, r"\$.people is not a 64-bit integer"),
        ({"people": True}, r"\$.people is not a 64-bit integer"),
        ({"score": "high"}, r"\$.score is not a number"),
        ({"indoor": "yes"}, r"\$.indoor is not true or false"),
        ({"tags": "cat"}, r"\$.tags is not an array"),
        ({"tags": ["cat", 3]}, r"\$.tags\[1\] is not a string"),
        ({"box": {"x": 1}}, r"\$.box lacks y"),
        ({"extra": 1}, r"\$ has extra, which the schema does not allow"),
        ({"people": None}, r"\$.people is null"),
    ],
)
def test_an_answer_that_does_not_fit_says_where(change: dict, message: str) -> None:
    answer = {"subject": "animal", "people": 2, "score": 1.0, "indoor": True, "tags": []}
    with pytest.raises(Mismatch, match=message):
        as_column_value({**answer, **change}, SCHEMA)


def test_parse_outcomes() -> None:
    labels = Labels("json_schema", {"name": "x", "schema": SCHEMA})
    good = json.dumps({"subject": "animal", "people": 0, "score": 1, "indoor": 1 == 1, "tags": []})
    assert labels.parse(good, "stop")[1:] == (None, None)
    assert labels.parse(good, "length")[1] == "truncated"
    _, kind, message = labels.parse(good, "content_filter")
    assert kind == "truncated"
    assert "content filter" in (message or "")
    assert labels.parse("Sure! Here is", "stop")[1] == "invalid_output"
    assert labels.parse('{"subject": NaN}', "stop")[1] == "invalid_output"
    assert labels.parse('{"subject": "animal"}', "stop")[2] == (
        "the answer does not fit the schema: $ lacks people, score, indoor, tags"
    )
    as_object = Labels("json_object", None)
    assert as_object.parse(' {"a": 1} ', "stop") == ('{"a": 1}', None, None)
    assert as_object.parse("{", "stop")[1] == "invalid_output"


def test_sample_values_fit_their_schema() -> None:
    for seed in ("a", "b", "c", "d"):
        as_column_value(sample_value(SCHEMA, seed), SCHEMA)


def test_schema_files_bare_or_wrapped(tmp_path: Path) -> None:
    bare = tmp_path / "my labels.json"
    bare.write_text(json.dumps(SCHEMA))
    # Not strict: `box` allows other properties, which OpenAI's strict mode refuses.
    assert load_schema_file(bare) == {"name": "my_labels", "strict": False, "schema": SCHEMA}
    wrapped = tmp_path / "w.json"
    wrapped.write_text(json.dumps({"name": "tags", "strict": False, "schema": SCHEMA}))
    assert load_schema_file(wrapped)["name"] == "tags"
    with pytest.raises(UsageError, match=r"schema .*nope.json: no such file"):
        load_schema_file(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UsageError, match=r"bad.json: not readable JSON"):
        load_schema_file(tmp_path / "bad.json")


def test_config_takes_a_schema_file_relative_to_itself_and_implies_json_schema(
    tmp_path: Path,
) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "labels.json").write_text(json.dumps(SCHEMA))
    toml = tmp_path / "conf" / "job.toml"
    toml.write_text('[request]\njson_schema = "labels.json"\n')
    req = load_config(toml).request
    assert req.response_format == "json_schema"
    assert req.json_schema == {"name": "labels", "strict": False, "schema": SCHEMA}
    table = tmp_path / "table.toml"
    table.write_text(
        '[request]\nresponse_format = "json_schema"\n'
        '[request.json_schema]\nname = "t"\n'
        '[request.json_schema.schema]\ntype = "object"\n'
        '[request.json_schema.schema.properties.cat]\ntype = "boolean"\n'
    )
    assert load_config(table).request.json_schema["schema"]["properties"] == {
        "cat": {"type": "boolean"}
    }


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('response_format = "json_schema"', r"response_format = 'json_schema': must be given"),
        (
            'response_format = "json_object"\njson_schema = { name = "x", schema = {} }',
            r"'json_schema' \(or unset\) when a json_schema is given",
        ),
        ('json_schema = { name = "a b", schema = {} }', r"'name' is 1 to 64 letters"),
        ('json_schema = { name = "x" }', r"an object with a 'schema'"),
    ],
)
def test_bad_structured_settings_are_named(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "job.toml"
    path.write_text(f"[request]\n{toml}\n")
    with pytest.raises(UsageError, match=message):
        load_config(path)


def test_a_bare_schema_is_sent_strict_only_when_strict_mode_takes_it() -> None:
    """OpenAI's strict mode refuses a schema with optional properties or without
    `additionalProperties: false`: such a bare schema goes without `strict`."""
    from pipeline.config.labels import as_json_schema_setting

    fits = {
        "type": "object",
        "properties": {
            "kind": {"type": "string"},
            "box": {
                "type": "object",
                "properties": {"x": {"type": "number"}},
                "required": ["x"],
                "additionalProperties": False,
            },
        },
        "required": ["kind", "box"],
        "additionalProperties": False,
    }
    assert as_json_schema_setting(fits)["strict"] is True
    optional = {**fits, "required": ["kind"]}
    assert as_json_schema_setting(optional)["strict"] is False
    open_inner = {
        **fits,
        "properties": {
            **fits["properties"],
            "box": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]},
        },
    }
    assert as_json_schema_setting(open_inner)["strict"] is False
    # OpenAI's own object keeps what the user wrote.
    assert as_json_schema_setting({"name": "n", "strict": True, "schema": optional})["strict"]
