"""The four model families against a real server process that answers in each family's
documented shape and refuses an image part in another's (tests/fakes.py scripts it on
the fake endpoint's family rules): captions, structured labels, usage and exact cost,
memories.ai's error envelope, resize; and each provider's decoder on its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pipeline.config.loading import load_config
from pipeline.config.prices import cost_usd, load_price_table
from pipeline.config.settings import JobConfig, RequestConfig
from pipeline.cost.images import billed_size, image_tokens
from pipeline.errors import EXIT_FATAL_API, EXIT_OK, TransientError, UsageError
from pipeline.http.providers import provider_for
from pipeline.testing.fake_families import BadRequest, message_parts
from pipeline.testing.fake_server import caption_for, completion_for, image_digest
from tests.fakes import Reply, ScriptedServer, digest_of_file, memories_error
from tests.helpers import SAMPLES, SCHEMA, by_name, results, run

MODELS = {
    "gpt": "gpt:gpt-4o",
    "gemini": "gemini:gemini-2.0-flash-lite",
    "qwen": "qwen:qwen3-vl-flash",
    "nova": "nova:us.amazon.nova-lite-v1:0",
}
FAMILIES = list(MODELS)


class NoKey:
    def redact(self, text: str) -> str:
        return text


def image_part(family: str, body: dict[str, Any]) -> dict[str, Any]:
    """The content part that carries the image, as sent."""
    parts = body["messages"][-1]["content"]
    return next(p for p in parts if "text" not in p)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_captions_with_its_usage_and_exact_cost(
    family: str, tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    model = MODELS[family]
    result = run(
        str(SAMPLES), "-o", str(tmp_path / "out"), "--endpoint", server.url, "--model", model
    )
    bodies = [s.body for s in server.seen]
    assert result.exit_code == EXIT_OK, result.output
    rows = results(tmp_path / "out")
    assert len(rows) == 6
    assert all(r["status"] == "ok" for r in rows)
    price = load_price_table()[model]
    for row in rows:
        assert row["caption"] == caption_for(digest_of_file(Path(row["source"])))
        assert row["completion_tokens"] > 0
        assert row["usage_source"] == "server"  # read from the family's own usage fields
        assert row["cost_usd"] == cost_usd(price, row["prompt_tokens"], row["completion_tokens"])
    part = image_part(family, bodies[0])
    expected_keys = {
        "gpt": {"type", "image_url"},
        "gemini": {"type", "file_uri", "mime_type"},
        "qwen": {"image"},
        "nova": {"type", "image_url"},
    }[family]
    assert set(part) == expected_keys
    if family != "gpt":  # a job means the same on every family: OpenAI's defaults, sent
        assert (bodies[0]["temperature"], bodies[0]["top_p"]) == (1.0, 1.0)
    else:
        assert "temperature" not in bodies[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_structured_labels_parse_on_every_family(
    family: str, tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    schema = tmp_path / "labels.json"
    schema.write_text(json.dumps(SCHEMA))
    result = run(
        str(SAMPLES), "-o", str(tmp_path / "out"), "--endpoint", server.url,
        "--model", MODELS[family], "--schema", str(schema),
    )  # fmt: skip
    body = server.seen[0].body
    assert result.exit_code == EXIT_OK, result.output
    rows = results(tmp_path / "out")
    assert len(rows) == 6
    for row in rows:
        assert row["status"] == "ok"
        parsed = row["parsed"]
        assert parsed["subject"] in ("animal", "landscape", "object")
        assert isinstance(parsed["people"], int)
        assert isinstance(parsed["indoor"], bool)
        assert parsed == json.loads(row["caption"])
    metadata = (body.get("extra_body") or {}).get("metadata", {})
    if family == "gemini":
        assert metadata["response_mime_type"] == "application/json"
        assert metadata["responseSchema"]["type"] == "OBJECT"
        assert metadata["responseSchema"]["properties"]["people"] == {"type": "INTEGER"}
    elif family == "qwen":
        assert metadata["response_format"]["json_schema"]["schema"] == SCHEMA
    elif family == "nova":  # no JSON mode: the schema goes in the prompt
        assert (
            json.dumps(SCHEMA, separators=(",", ":")) in body["messages"][-1]["content"][0]["text"]
        )
        assert "extra_body" not in body
    else:
        assert body["response_format"]["type"] == "json_schema"


@pytest.mark.parametrize("family", FAMILIES)
def test_the_envelope_stops_every_family_alike(
    family: str, tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    """memories.ai's no-credits code, whatever the family: the job stops, rows pending."""
    server.default = Reply(body={"code": "0402", "msg": "not enough credits", "data": None})
    result = run(
        str(SAMPLES),
        "-o",
        str(tmp_path / "out"),
        "--endpoint",
        server.url,
        "--model",
        MODELS[family],
    )
    assert result.exit_code == EXIT_FATAL_API, result.output
    assert "not enough credits" in result.output
    assert not [r for r in results(tmp_path / "out") if r["status"] == "ok"]


@pytest.mark.parametrize("family", ["gemini", "qwen", "nova"])
def test_a_server_error_is_retried_then_answered(
    family: str, tmp_path: Path, server: ScriptedServer, key: str, fast_backoff: None
) -> None:
    sunset = digest_of_file(SAMPLES / "sunset.jpg")
    server.plan(sunset, memories_error(503, "busy"))
    result = run(
        str(SAMPLES),
        "-o",
        str(tmp_path / "out"),
        "--endpoint",
        server.url,
        "--model",
        MODELS[family],
    )
    assert server.count(sunset) == 2
    assert result.exit_code == EXIT_OK, result.output
    assert by_name(results(tmp_path / "out"))["sunset.jpg"]["attempts"] == 2


@pytest.mark.parametrize("family", ["gemini", "qwen", "nova"])
def test_resize_model_sends_the_size_the_family_bills(
    family: str, tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.effect_noise((4000, 3000), 40).convert("RGB").save(photos / "big.jpg", quality=80)
    model = MODELS[family]
    rule = load_price_table()[model].image
    assert rule is not None
    result = run(
        str(photos), "-o", str(tmp_path / "out"), "--endpoint", server.url,
        "--model", model, "--resize", "model",
    )  # fmt: skip
    body = server.seen[0].body
    assert result.exit_code == EXIT_OK, result.output
    (image,) = message_parts(family, body)[1]
    _, size = image_digest(image["url"])
    assert size == billed_size(rule, 4000, 3000)
    assert size[0] < 4000
    assert image_tokens(rule, *size) == image_tokens(rule, 4000, 3000)


def test_another_familys_image_part_is_refused_by_the_server() -> None:
    """The fake is strict, so the shapes above are proven, not assumed."""
    gpt_body = provider_for("gpt:gpt-4o").payload(RequestConfig(), "https://x/a.jpg", "image/jpeg")
    for family in ("gemini", "qwen", "nova"):
        body = {**gpt_body, "model": MODELS[family]}
        with pytest.raises(BadRequest, match=f"not in the {family}: family's shape"):
            completion_for(body, load_price_table())


ANSWERS = {
    "completion": {
        "id": "r1",
        "object": "completion",
        "model": "m",
        "created_at": 1767093024,
        "status": "completed",
        "choices": [{"text": "A cat.", "index": 0}],
        "usage": {"input_tokens": 1812, "output_tokens": 38, "total_tokens": 1850},
        "meta": {"provider": "gemini", "provider_model": "m"},
    },
    "nova": {
        "id": "r2",
        "object": "chat.completion",
        "created": 1767097779,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "A cat."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1812, "output_token": 38, "total_tokens": 1850},
    },
    "openai": {
        "id": "r3",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "A cat."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1812, "completion_tokens": 38, "total_tokens": 1850},
    },
}


@pytest.mark.parametrize("family", ["gemini", "qwen", "nova"])
@pytest.mark.parametrize("shape", list(ANSWERS))
def test_every_decoder_reads_every_documented_shape(family: str, shape: str) -> None:
    completion = provider_for(MODELS[family]).completion(ANSWERS[shape], 200, NoKey())
    assert completion.choices[0].content == "A cat."
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.reported) == (1812, 38, True)
    assert completion.created in (1767093024, 1767097779, 1)


@pytest.mark.parametrize("family", ["gemini", "qwen", "nova"])
def test_an_unknown_shape_is_a_transient_error_with_the_servers_text(family: str) -> None:
    with pytest.raises(TransientError, match="without choices"):
        provider_for(MODELS[family]).completion({"output": "A cat."}, 200, NoKey())


def test_what_a_family_does_not_document_is_refused_before_sending() -> None:
    with pytest.raises(UsageError, match="stream = True: must be false for gemini: models"):
        JobConfig(request=RequestConfig(model=MODELS["gemini"], stream=True))
    with pytest.raises(UsageError, match="only gemini: and qwen: models take a thinking budget"):
        JobConfig(request=RequestConfig(model=MODELS["gpt"], thinking_budget=100))
    bad = {"name": "x", "schema": {"type": "object", "$defs": {}, "properties": {}}}
    with pytest.raises(UsageError, match=r"schema\.\$defs: Gemini's response schema has no"):
        JobConfig(request=RequestConfig(model=MODELS["gemini"], json_schema=bad))


def test_thinking_goes_where_each_family_takes_it() -> None:
    gemini = provider_for(MODELS["gemini"]).payload(
        RequestConfig(model=MODELS["gemini"], thinking_budget=512), "u", "image/png"
    )
    assert gemini["extra_body"]["metadata"]["thinking_config"] == {"thinking_budget": 512}
    qwen = provider_for(MODELS["qwen"]).payload(
        RequestConfig(model=MODELS["qwen"], thinking_budget=0), "u", "image/png"
    )
    assert qwen["extra_body"]["metadata"] == {"enable_thinking": False}


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("gpt-4o", "gpt:gpt-4o"),
        ("gemini-2.0-flash-lite", "gemini:gemini-2.0-flash-lite"),
        ("us.amazon.nova-lite-v1:0", "nova:us.amazon.nova-lite-v1:0"),
    ],
)
def test_an_unprefixed_name_gets_its_familys_prefix_on_memories_ai(given: str, sent: str) -> None:
    assert load_config(None, {"model": given}).request.model == sent
    elsewhere = load_config(
        None, {"model": given, "endpoint": "http://127.0.0.1:9/v1/chat/completions"}
    )
    assert elsewhere.request.model == given  # another server's names are its own


def test_a_name_in_no_table_suggests_one_across_families() -> None:
    with pytest.raises(UsageError, match=r"did you mean 'qwen:qwen3-vl-flash'"):
        load_config(None, {"model": "qwen:qwen3-vl-flsh"})
    with pytest.raises(UsageError, match=r"did you mean 'gemini:gemini-2\.0-flash-lite'"):
        load_config(None, {"model": "gemini-2.0-flash-lit"})


@pytest.mark.parametrize("family", ["gemini", "qwen", "nova"])
def test_the_bundled_fake_speaks_every_family_without_a_key(
    family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEMORIES_API_KEY", raising=False)
    out = tmp_path / "out"
    result = run(str(SAMPLES), "-o", str(out), "--endpoint", "fake", "--model", MODELS[family])
    assert result.exit_code == EXIT_OK, result.output
    rows = results(out)
    assert [r["status"] for r in rows] == ["ok"] * 6
    assert {r["model"] for r in rows} == {MODELS[family].split(":", 1)[1]}
