"""Job configuration: TOML file -> frozen, validated dataclasses.

Precedence is flag > file > default. Defaults live here, in the dataclasses; the documented
copy in `configs/default.toml` is checked against them by the tests. Every value is checked
on construction (`__post_init__`), and an error names where the value came from (a file's
`[section] key`, or a flag), the value, and what is allowed.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlparse

from pipeline.config.checks import SettingError
from pipeline.config.checks import setting as _setting
from pipeline.config.checks import validate as _validate
from pipeline.config.gemini_schema import gemini_schema
from pipeline.config.labels import check_json_schema
from pipeline.config.prices import (
    DEFAULT_PROVIDER,
    PriceTable,
    canonical_model,
    family_of,
    load_price_table,
)
from pipeline.errors import UsageError

FAKE_ENDPOINT = "fake"
DEFAULT_URL = "https://mavi-backend.memories.ai/serve/api/v2/iu/chat/completions"

AuthScheme = Literal["raw", "bearer"]
Detail = Literal["auto", "low", "high"]
ResponseFormat = Literal["text", "json_object", "json_schema"]
MaxTokensField = Literal["max_tokens", "max_completion_tokens"]


def _is_url(value: str) -> bool:
    if value == FAKE_ENDPOINT:
        return True
    parsed = urlparse(value)
    return parsed.scheme in ("http", "https") and bool(parsed.netloc)


def _in(lo: float, hi: float) -> Callable[[Any], bool]:
    return lambda v: math.isfinite(v) and lo <= v <= hi


def _is_stop(value: Any) -> bool:
    if isinstance(value, str):
        return value != ""
    return (
        isinstance(value, list)
        and 1 <= len(value) <= 4
        and all(isinstance(s, str) and s for s in value)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointConfig:
    url: str = _setting(
        DEFAULT_URL,
        kinds=(str,),
        allowed=f"an http(s) URL of a chat-completions endpoint, or {FAKE_ENDPOINT!r}",
        check=_is_url,
    )
    api_key_env: str = _setting(
        "MEMORIES_API_KEY",
        kinds=(str,),
        allowed="the name of an environment variable (letters, digits, _)",
        check=lambda v: re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v) is not None,
    )
    auth_scheme: AuthScheme = _setting(
        "raw",
        kinds=(str,),
        allowed="'raw' (Authorization: <key>) or 'bearer' (Authorization: Bearer <key>)",
        check=lambda v: v in ("raw", "bearer"),
    )
    timeout: float = _setting(
        120.0, kinds=(int, float), allowed="seconds, from 1 to 3600", check=_in(1, 3600)
    )

    def __post_init__(self) -> None:
        _validate("endpoint", self)

    @property
    def is_fake(self) -> bool:
        return self.url == FAKE_ENDPOINT


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestConfig:
    model: str = _setting(
        "gpt:gpt-4o", kinds=(str,), allowed="a model name such as 'gpt:gpt-4o'", check=bool
    )
    system_prompt: str = _setting("", kinds=(str,), allowed="a string ('' for none)")
    prompt: str = _setting(
        "Describe this image in one concise sentence.",
        kinds=(str,),
        allowed="a non-empty string",
        check=lambda v: v.strip() != "",
    )
    detail: Detail | None = _setting(
        None,
        kinds=(str, type(None)),
        allowed="'auto', 'low' or 'high' (unset: not sent)",
        check=lambda v: v in ("auto", "low", "high"),
    )
    response_format: ResponseFormat | None = _setting(
        None,
        kinds=(str, type(None)),
        allowed="'text', 'json_object' or 'json_schema' (unset: not sent)",
        check=lambda v: v in ("text", "json_object", "json_schema"),
    )
    # OpenAI's `json_schema` object: name, strict, schema. A string in the file (or
    # --schema) names a JSON file holding it, or a bare JSON Schema.
    json_schema: dict[str, Any] | None = _setting(
        None, kinds=(dict, type(None)), allowed="a JSON Schema (see [request] json_schema)"
    )
    temperature: float | None = _setting(
        None, kinds=(int, float, type(None)), allowed="a number from 0 to 2", check=_in(0, 2)
    )
    max_tokens: int = _setting(
        1000, kinds=(int,), allowed="a whole number from 1 to 1000000", check=_in(1, 1_000_000)
    )
    max_tokens_field: MaxTokensField = _setting(
        "max_tokens",
        kinds=(str,),
        allowed="'max_tokens' or 'max_completion_tokens'",
        check=lambda v: v in ("max_tokens", "max_completion_tokens"),
    )
    top_p: float | None = _setting(
        None, kinds=(int, float, type(None)), allowed="a number from 0 to 1", check=_in(0, 1)
    )
    frequency_penalty: float | None = _setting(
        None, kinds=(int, float, type(None)), allowed="a number from -2 to 2", check=_in(-2, 2)
    )
    presence_penalty: float | None = _setting(
        None, kinds=(int, float, type(None)), allowed="a number from -2 to 2", check=_in(-2, 2)
    )
    n: int = _setting(1, kinds=(int,), allowed="a whole number from 1 to 128", check=_in(1, 128))
    stream: bool = _setting(False, kinds=(bool,), allowed="true or false")
    stop: str | list[str] | None = _setting(
        None,
        kinds=(str, list, type(None)),
        allowed="a non-empty string or a list of 1 to 4 non-empty strings",
        check=_is_stop,
    )

    # Gemini's and Qwen's thinking budget in tokens (0: no thinking); unset: not sent.
    thinking_budget: int | None = _setting(
        None,
        kinds=(int, type(None)),
        allowed="a whole number of tokens from 0 to 1000000 (unset: not sent)",
        check=_in(0, 1_000_000),
    )
    # How a local image goes into a gemini: or qwen: image part: as a data URL
    # (`data:image/jpeg;base64,...`), or as bare base64. memories.ai's pages say "URL or
    # base64" without saying which form of base64: UNCONFIRMED, so it is a setting.
    inline_images: str = _setting(
        "data_url",
        kinds=(str,),
        allowed="'data_url' or 'base64'",
        check=lambda v: v in ("data_url", "base64"),
    )

    # "off": images byte for byte; "model": reduced to the size the model bills them at
    # (same tokens, far fewer bytes); a number: longest side in pixels.
    resize: str | int = _setting(
        "off",
        kinds=(str, int),
        allowed="'off', 'model', or the longest side in pixels (64 to 16384)",
        check=lambda v: v in ("off", "model") or (isinstance(v, int) and 64 <= v <= 16384),
    )
    # Download http(s) images to resize them (otherwise the endpoint fetches them as they are).
    fetch_urls: bool = _setting(False, kinds=(bool,), allowed="true or false")

    def __post_init__(self) -> None:
        if isinstance(self.resize, str) and self.resize.isdigit():  # --resize 1024
            object.__setattr__(self, "resize", int(self.resize))
        _validate("request", self)
        if self.json_schema is not None:
            problem = check_json_schema(self.json_schema)
            if problem is not None:
                raise SettingError("request", "json_schema", "...", problem)
            if self.response_format is None:
                object.__setattr__(self, "response_format", "json_schema")
            elif self.response_format != "json_schema":
                raise SettingError(
                    "request",
                    "response_format",
                    self.response_format,
                    "'json_schema' (or unset) when a json_schema is given",
                )
        elif self.response_format == "json_schema":
            raise SettingError(
                "request", "response_format", "json_schema", "given with a json_schema (--schema)"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    concurrency: int = _setting(
        16, kinds=(int,), allowed="a whole number from 1 to 1024", check=_in(1, 1024)
    )
    rpm: int | None = _setting(
        None,
        kinds=(int, type(None)),
        allowed="requests per minute, a whole number >= 1 (unset: no cap)",
        check=_in(1, 10_000_000),
    )
    tpm: int | None = _setting(
        None,
        kinds=(int, type(None)),
        allowed="tokens per minute, a whole number >= 1 (unset: no cap)",
        check=_in(1, 10_000_000_000),
    )
    max_attempts: int = _setting(
        6, kinds=(int,), allowed="a whole number from 1 to 100", check=_in(1, 100)
    )
    max_rate_limit_waits: int = _setting(
        30, kinds=(int,), allowed="a whole number from 0 to 1000", check=_in(0, 1000)
    )
    max_retry_after: float = _setting(
        120.0, kinds=(int, float), allowed="seconds, from 0 to 3600", check=_in(0, 3600)
    )
    max_cost_usd: float | None = _setting(
        None,
        kinds=(int, float, type(None)),
        allowed="US dollars > 0 (unset: no cap)",
        check=lambda v: math.isfinite(v) and v > 0,
    )
    max_image_mb: float = _setting(
        20.0, kinds=(int, float), allowed="megabytes, from 0.001 to 1024", check=_in(0.001, 1024)
    )
    max_response_mb: float = _setting(
        32.0, kinds=(int, float), allowed="megabytes, from 0.001 to 1024", check=_in(0.001, 1024)
    )

    def __post_init__(self) -> None:
        _validate("limits", self)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputConfig:
    rows_per_shard: int = _setting(
        10_000, kinds=(int,), allowed="a whole number from 1 to 10000000", check=_in(1, 10_000_000)
    )

    def __post_init__(self) -> None:
        _validate("output", self)


@dataclass(frozen=True, slots=True, kw_only=True)
class DedupeConfig:
    """`--dedupe near`: images that look the same are sent once (`pipeline/dedupe/`)."""

    mode: str = _setting(
        "off",
        kinds=(str,),
        allowed="'off' or 'near' (images within `distance` bits of each other sent once)",
        check=lambda v: v in ("off", "near"),
    )
    # Chosen by measurement (bench/neardedupe.py): the smallest distance at which every
    # near-copy of the test photos joined its original, with no two distinct photos merged.
    distance: int = _setting(
        8, kinds=(int,), allowed="bits, a whole number from 0 to 16", check=_in(0, 16)
    )

    def __post_init__(self) -> None:
        _validate("dedupe", self)

    @property
    def near(self) -> bool:
        return self.mode == "near"


def closest_model(name: str, known: list[str]) -> str | None:
    """The known model whose name after its provider prefix is closest to `name`'s, so
    `gpt4o` suggests `gpt:gpt-4o`, not `gpt:o3` (whole names share the `gpt:` prefix)."""
    by_suffix: dict[str, str] = {}
    for model in known:
        by_suffix.setdefault(model.split(":", 1)[-1], model)
    near = difflib.get_close_matches(name.split(":", 1)[-1], list(by_suffix), n=1)
    return by_suffix[near[0]] if near else None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobConfig:
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    request: RequestConfig = field(default_factory=RequestConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    dedupe: DedupeConfig = field(default_factory=DedupeConfig)
    prices: PriceTable = field(default_factory=load_price_table)

    def __post_init__(self) -> None:
        model = self.request.model
        if family_of(model) is None and _serves_prefixed_names(self.endpoint.url):
            # memories.ai picks the model family by the prefix: `gpt-4o` alone passes every
            # check here, then every request fails model_not_found. Send `gpt:gpt-4o`
            # (or `nova:us.amazon.nova-lite-v1:0`: the family that lists the name).
            named = self.prices.resolve(model) or canonical_model(model)
            object.__setattr__(self, "request", replace(self.request, model=named))
        _check_family(self.request)
        if self.request.model not in self.prices:
            near = closest_model(self.request.model, list(self.prices))
            hint = f" (did you mean {near!r}?)" if near else ""
            raise UsageError(
                f"[request] model = {self.request.model!r}: no price for this model{hint}; "
                'use one listed by `caption prices`, or add a [prices."<model>"] table '
                "with input_per_1m and output_per_1m"
            )


def _check_family(req: RequestConfig) -> None:
    """Refuse, before sending, what the model's family does not document."""
    family = family_of(req.model) or DEFAULT_PROVIDER
    if req.stream and family != DEFAULT_PROVIDER:
        raise SettingError(
            "request",
            "stream",
            True,
            f"false for {family}: models: memories.ai documents no stream format for them",
        )
    if family == "gemini" and req.json_schema is not None:
        gemini_schema(req.json_schema.get("schema"))  # refuses what Gemini cannot express
    if req.thinking_budget is not None and family not in ("gemini", "qwen"):
        raise SettingError(
            "request",
            "thinking_budget",
            req.thinking_budget,
            "unset for this model: only gemini: and qwen: models take a thinking budget",
        )


def _serves_prefixed_names(url: str) -> bool:
    """Whether the endpoint names models `family:model` (memories.ai's does)."""
    host = urlparse(url).hostname or ""
    return host == "memories.ai" or host.endswith(".memories.ai")
