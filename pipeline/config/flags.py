"""The job settings a command-line flag can set: one table, from which the CLI builds its
options (`cli/options.py`) and the config maps each flag, and each keyword argument of
the Python API, to its `[section] key` (`settings.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# How `caption estimate` takes a flag: it shapes what is priced ("priced"), it matters only
# for a --pilot's real requests ("pilot"), or `estimate` has no such flag ("run").
Use = str


@dataclass(frozen=True, slots=True)
class Flag:
    name: str  # the flag without dashes, as a Python name: max_cost for --max-cost
    section: str
    key: str
    help: str
    type: type | tuple[str, ...] = str  # str, int, float, Path (a file), or the choices
    is_flag: bool = False
    metavar: str | None = None
    estimate: Use = "priced"

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


FLAGS: tuple[Flag, ...] = (
    # --model is the first: `estimate` takes it repeated, to compare models (cli/options.py).
    Flag("model", "request", "model", "Model, e.g. gpt:gpt-4o ([request] model)."),
    Flag("prompt", "request", "prompt", "Prompt sent with every image."),
    Flag("system_prompt", "request", "system_prompt", "System message ('' for none)."),
    Flag("detail", "request", "detail", "Image detail level.", type=("auto", "low", "high")),
    Flag("max_tokens", "request", "max_tokens", "Most tokens generated per choice.", type=int),
    Flag(
        "resize",
        "request",
        "resize",
        "Send images as the model sees them: 'model' reduces each to the size it is billed "
        "at (same tokens, far fewer bytes); PX caps the longest side.",
        metavar="off|model|PX",
    ),
    Flag(
        "fetch_urls",
        "request",
        "fetch_urls",
        "Download http(s) images so that --resize applies to them too.",
        is_flag=True,
    ),
    Flag(
        "schema",
        "request",
        "json_schema",
        "JSON Schema file for structured labels: answers are checked and parsed into a "
        "typed `parsed` column ([request] json_schema).",
        type=Path,
    ),
    Flag(
        "endpoint",
        "endpoint",
        "url",
        "Endpoint URL, or 'fake' for the built-in fake.",
        estimate="pilot",
    ),
    Flag(
        "api_key_env",
        "endpoint",
        "api_key_env",
        "Environment variable holding the API key.",
        estimate="pilot",
    ),
    Flag(
        "auth_scheme",
        "endpoint",
        "auth_scheme",
        "raw: Authorization: <key> (memories.ai); bearer: Bearer <key>.",
        type=("raw", "bearer"),
        estimate="pilot",
    ),
    Flag(
        "temperature",
        "request",
        "temperature",
        "Sampling temperature, 0 to 2.",
        type=float,
        estimate="pilot",
    ),
    Flag(
        "concurrency",
        "limits",
        "concurrency",
        "Requests in flight at once.",
        type=int,
        estimate="pilot",
    ),
    Flag("timeout", "endpoint", "timeout", "Seconds per request.", type=float, estimate="pilot"),
    Flag("rpm", "limits", "rpm", "Requests-per-minute cap.", type=int, estimate="run"),
    Flag("tpm", "limits", "tpm", "Tokens-per-minute cap.", type=int, estimate="run"),
    Flag(
        "max_attempts",
        "limits",
        "max_attempts",
        "Tries per row for transient failures.",
        type=int,
        estimate="run",
    ),
    Flag(
        "max_cost",
        "limits",
        "max_cost_usd",
        "Budget cap in USD for the output folder's total spend.",
        type=float,
        estimate="run",
    ),
    Flag(
        "dedupe",
        "dedupe",
        "mode",
        "'near': images that look the same (resized, re-encoded, lightly cropped copies) "
        "are sent once; the others carry that answer, `dedupe_of` naming it.",
        type=("off", "near"),
    ),
    Flag(
        "dedupe_distance",
        "dedupe",
        "distance",
        "Most bits in which two images' perceptual hashes may differ to count as one.",
        type=int,
    ),
    Flag(
        "rows_per_shard",
        "output",
        "rows_per_shard",
        "Result rows per Parquet shard.",
        type=int,
        estimate="run",
    ),
)

FLAG_SETTINGS: dict[str, tuple[str, str]] = {f.name: (f.section, f.key) for f in FLAGS}
