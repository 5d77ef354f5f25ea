from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from pipeline.config.flags import FLAG_SETTINGS
from pipeline.config.loading import SECTIONS, load_config
from pipeline.config.settings import (
    JobConfig,
)
from pipeline.errors import UsageError
from tests.helpers import REPO


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    cfg = load_config()
    assert cfg.request.model == "gpt:gpt-4o"
    assert cfg.endpoint.auth_scheme == "raw"
    assert cfg.endpoint.api_key_env == "MEMORIES_API_KEY"
    assert cfg.request.max_tokens == 1000


def test_default_toml_documents_every_setting_with_its_real_default() -> None:
    """configs/default.toml may not drift from the dataclass defaults, nor omit a setting."""
    text = (REPO / "configs" / "default.toml").read_text()
    active = tomllib.loads(text)
    # Commented-out settings count as documented; uncomment them to read their values.
    uncommented = "\n".join(
        line[2:] if line.startswith("# ") and " = " in line and not line.startswith("#  ") else line
        for line in text.splitlines()
    )
    documented = tomllib.loads(uncommented.split("\n# [prices.")[0])
    for name, cls in SECTIONS.items():
        defaults = cls()
        for f in dataclasses.fields(cls):
            assert f.name in documented[name], f"[{name}] {f.name} missing from default.toml"
            if f.name in active.get(name, {}):
                assert active[name][f.name] == getattr(defaults, f.name), f"[{name}] {f.name}"
            else:
                assert getattr(defaults, f.name) is None, f"[{name}] {f.name} must be active"
    assert load_config(REPO / "configs" / "default.toml") == JobConfig()


def test_example_job_config_loads() -> None:
    cfg = load_config(REPO / "configs" / "nightly-labels.toml")
    assert cfg.request.response_format == "json_schema"
    assert cfg.request.json_schema is not None
    assert cfg.request.json_schema["name"] == "product_labels"
    assert cfg.limits.max_cost_usd == 200.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[limits]\nconcurency = 4\n",
            r"\[limits\] concurency: unknown key; did you mean 'concurrency'",
        ),
        ("[limit]\nconcurrency = 4\n", r"limit: unknown key; did you mean 'limits'"),
        (
            "[limits]\nconcurrency = 'many'\n",
            r"\[limits\] concurrency = 'many': must be a whole number",
        ),
        ("[limits]\nconcurrency = true\n", r"\[limits\] concurrency = True: must be"),
        (
            "[limits]\nconcurrency = 0\n",
            r"\[limits\] concurrency = 0: must be a whole number from 1 to 1024",
        ),
        (
            "[request]\ntemperature = 2.5\n",
            r"\[request\] temperature = 2.5: must be a number from 0 to 2",
        ),
        ("[request]\ntop_p = -0.1\n", r"\[request\] top_p = -0.1: must be a number from 0 to 1"),
        (
            "[request]\nfrequency_penalty = 3\n",
            r"frequency_penalty = 3: must be a number from -2 to 2",
        ),
        (
            "[request]\ndetail = 'medium'\n",
            r"\[request\] detail = 'medium': must be 'auto', 'low' or 'high'",
        ),
        ("[request]\nstop = ['a','b','c','d','e']\n", r"\[request\] stop = .*1 to 4"),
        ("[request]\nn = 0\n", r"\[request\] n = 0"),
        ("[request]\nprompt = '  '\n", r"\[request\] prompt = '  ': must be a non-empty string"),
        ("[endpoint]\nauth_scheme = 'token'\n", r"auth_scheme = 'token': must be 'raw'"),
        ("[endpoint]\nurl = 'ftp://x'\n", r"url = 'ftp://x': must be an http\(s\) URL"),
        (
            "[request]\nmodel = 'gpt:gpt-4oo'\n",
            r"model = 'gpt:gpt-4oo': no price for this model \(did you mean 'gpt:gpt-4o'\?\)",
        ),
        ("[output]\nrows_per_shard = 0\n", r"\[output\] rows_per_shard = 0"),
        ("[limits]\nmax_cost_usd = 0\n", r"max_cost_usd = 0: must be US dollars > 0"),
        ("limits = 3\n", r"limits = 3: must be a \[limits\] table"),
        ("[limits\n", r"not valid TOML"),
    ],
)
def test_config_errors_name_file_key_value_and_range(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(UsageError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"config .*nope\.toml: no such file"):
        load_config(tmp_path / "nope.toml")


def test_flags_override_file_override_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nconcurrency = 4\nrpm = 100\n[request]\nmodel = 'gpt:o3'\n")
    cfg = load_config(path, {"concurrency": 8, "model": None})
    assert cfg.limits.concurrency == 8  # flag
    assert cfg.limits.rpm == 100  # file
    assert cfg.request.model == "gpt:o3"  # file; an unset flag does not override
    assert cfg.limits.max_attempts == 6  # default


def test_bad_flag_value_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^--concurrency: \[limits\] concurrency = 0"):
        load_config(None, {"concurrency": 0})
    with pytest.raises(UsageError, match=r"^--model: \[request\] model = 'gpt:nope'"):
        load_config(None, {"model": "gpt:nope"})


def test_every_flag_maps_to_a_real_setting() -> None:
    for section, key in FLAG_SETTINGS.values():
        assert key in {f.name for f in dataclasses.fields(SECTIONS[section])}


def test_job_prices_add_models(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[request]\nmodel = 'gpt:gpt-6'\n"
        "[prices.'gpt:gpt-6']\ninput_per_1m = 3.0\noutput_per_1m = 12.0\n"
        "[prices.'gpt-4o']\ninput_per_1m = 2.0\noutput_per_1m = 9.0\n",
    )
    cfg = load_config(path)
    assert cfg.prices["gpt:gpt-6"].input_per_1m == 3.0
    assert cfg.prices["gpt:gpt-4o"].output_per_1m == 9.0
    assert cfg.prices["gpt:o3"].input_per_1m == 2.0


def test_bad_job_price(tmp_path: Path) -> None:
    path = write(tmp_path, "[prices.'gpt:gpt-6']\ninput_per_1m = -1\noutput_per_1m = 1\n")
    with pytest.raises(UsageError, match=r'\[prices\."gpt:gpt-6"\] input_per_1m = -1'):
        load_config(path)


def test_config_is_frozen() -> None:
    cfg = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.limits.concurrency = 3  # type: ignore[misc]


def test_a_misspelt_model_is_matched_by_the_name_after_its_prefix() -> None:
    from pipeline.config.settings import closest_model

    known = ["gpt:o3", "gpt:gpt-4o", "gpt:gpt-4o-mini", "gpt:gpt-5-mini"]
    assert closest_model("gpt4o", known) == "gpt:gpt-4o"
    assert closest_model("gpt:gpt4o", known) == "gpt:gpt-4o"
    assert closest_model("gpt-5-mimi", known) == "gpt:gpt-5-mini"
    assert closest_model("llama", known) is None


def test_an_unprefixed_model_is_sent_with_its_family_prefix_to_memories_ai() -> None:
    """memories.ai picks the family by the prefix: `gpt-4o` alone fails every request."""
    import json

    from pipeline.http.request import BodyTemplate

    config = load_config(overrides={"model": "gpt-4o"})  # the default URL: memories.ai
    assert config.request.model == "gpt:gpt-4o"
    body = json.loads(BodyTemplate.for_request(config.request).with_url("https://x/a.png"))
    assert body["model"] == "gpt:gpt-4o"
    # Another server gets the name as written (OpenAI, vLLM... know no prefixes).
    other = load_config(overrides={"model": "gpt-4o", "endpoint": "http://127.0.0.1:9/v1"})
    assert other.request.model == "gpt-4o"


def test_response_format_as_openais_request_body_has_it(tmp_path: Path) -> None:
    """A `[request.response_format]` table copied from OpenAI's docs means the same as the
    `response_format` and `json_schema` settings."""
    schema = {
        "type": "object",
        "properties": {"subject": {"type": "string"}},
        "required": ["subject"],
        "additionalProperties": False,
    }
    job = tmp_path / "job.toml"
    job.write_text(
        "[request.response_format]\n"
        'type = "json_schema"\n'
        "[request.response_format.json_schema]\n"
        'name = "labels"\n'
        "strict = true\n"
        "[request.response_format.json_schema.schema]\n"
        'type = "object"\n'
        'required = ["subject"]\n'
        "additionalProperties = false\n"
        "[request.response_format.json_schema.schema.properties.subject]\n"
        'type = "string"\n'
    )
    config = load_config(job)
    assert config.request.response_format == "json_schema"
    assert config.request.json_schema == {"name": "labels", "strict": True, "schema": schema}
    plain = tmp_path / "plain.toml"
    plain.write_text('[request.response_format]\ntype = "json_object"\n')
    assert load_config(plain).request.response_format == "json_object"
