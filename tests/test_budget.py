"""Money you can trust: usage counted when the server sends none, billed attempts that
were unusable, and a budget cap that holds when the server bills more than estimated."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config.loading import load_config
from pipeline.config.prices import cost_usd
from pipeline.cost.images import image_tokens
from pipeline.cost.tokens import prompt_text_tokens, text_tokens
from pipeline.engine.budget import Budget, BudgetReached
from tests.fakes import Reply, ScriptedServer, digest_of_file
from tests.helpers import SAMPLES, by_name, distinct_images, results, run

pytestmark = pytest.mark.usefixtures("fast_backoff")

GPT4O = load_config().prices["gpt:gpt-4o"]


def expected_prompt(width: int, height: int) -> int:
    assert GPT4O.image is not None
    prompt = load_config().request.prompt
    return prompt_text_tokens("", prompt) + image_tokens(GPT4O.image, width, height, None)


def test_an_answer_without_usage_is_counted_not_free(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    caption = "A red square on a white table."
    body = {"id": "x", "choices": [{"index": 0, "message": {"content": caption}}]}
    server.default = Reply(body=body)
    out = tmp_path / "out"
    result = run(str(SAMPLES), "-o", str(out), "--endpoint", server.url)
    assert result.exit_code == 0, result.output
    assert "the server sent no usage, or none that reads, for 6 rows" in result.output
    for row in results(out):
        assert row["usage_source"] == "estimated"
        prompt = expected_prompt(row["image_width"], row["image_height"])
        assert row["prompt_tokens"] == prompt
        assert row["completion_tokens"] == text_tokens(caption)
        assert row["cost_usd"] == pytest.approx(
            cost_usd(GPT4O, prompt, text_tokens(caption)), rel=1e-12
        )


def test_a_stream_without_usage_is_counted_too(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    events = [
        {"id": "s", "choices": [{"index": 0, "delta": {"content": "A cat."}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    sse = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    server.default = Reply(raw=sse + b"data: [DONE]\n\n", content_type="text/event-stream")
    config = tmp_path / "job.toml"
    config.write_text("[request]\nstream = true\n")
    out = tmp_path / "out"
    result = run(
        str(SAMPLES / "icon.gif"), "-o", str(out), "--endpoint", server.url, "--config", str(config)
    )
    assert result.exit_code == 0, result.output
    (row,) = results(out)
    assert (row["caption"], row["usage_source"]) == ("A cat.", "estimated")
    assert row["completion_tokens"] == text_tokens("A cat.")
    assert row["cost_usd"] > 0


def test_server_usage_is_marked_as_such(tmp_path: Path, server: ScriptedServer, key: str) -> None:
    out = tmp_path / "out"
    assert run(str(SAMPLES / "icon.gif"), "-o", str(out), "--endpoint", server.url).exit_code == 0
    (row,) = results(out)
    assert row["usage_source"] == "server"


def test_an_unusable_answer_that_was_billed_is_in_the_rows_cost(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    imgs = tmp_path / "imgs"
    shutil.copytree(SAMPLES, imgs)
    billed_but_broken = Reply(
        body={"id": "b", "usage": {"prompt_tokens": 1000, "completion_tokens": 50}}
    )
    server.plan(digest_of_file(imgs / "icon.gif"), billed_but_broken)
    server.plan(digest_of_file(imgs / "sunset.jpg"), billed_but_broken, billed_but_broken)
    config = tmp_path / "job.toml"
    config.write_text("[limits]\nmax_attempts = 2\n")
    out = tmp_path / "out"
    result = run(str(imgs), "-o", str(out), "--endpoint", server.url, "--config", str(config))
    assert result.exit_code == 1, result.output
    rows = by_name(results(out))
    extra = cost_usd(GPT4O, 1000, 50)
    icon = rows["icon.gif"]
    assert icon["status"] == "ok"
    own = cost_usd(GPT4O, icon["prompt_tokens"], icon["completion_tokens"])
    assert icon["cost_usd"] == pytest.approx(own + extra, rel=1e-12)
    sunset = rows["sunset.jpg"]  # both attempts unusable: an error row that still cost
    assert (sunset["status"], sunset["attempts"]) == ("error", 2)
    assert sunset["cost_usd"] == pytest.approx(2 * extra, rel=1e-12)


def test_the_cap_holds_when_the_server_bills_more_than_the_estimate(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    """The server bills about 11x the estimated prompt tokens (3,000 for a small image)
    and every completion runs to max_tokens."""
    src = distinct_images(tmp_path / "imgs", 40)
    body = {
        "id": "x",
        "choices": [{"index": 0, "message": {"content": "x"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3000, "completion_tokens": 100},
    }
    server.default = Reply(body=body)
    out = tmp_path / "out"
    args = [str(src), "-o", str(out), "--endpoint", server.url, "--concurrency", "4"]
    result = run(*args, "--max-tokens", "100", "--max-cost", "0.05")
    assert result.exit_code == 4, result.output
    spent = sum(r["cost_usd"] for r in results(out))
    assert 0.04 < spent <= 0.05
    assert "what the server billed against the estimate" in result.output


def test_rows_in_flight_are_valued_at_the_ratio_learned_since_they_left() -> None:
    budget = Budget(1.0)
    budget.reserve(100, 0.01, usd_per_prompt_token=0.001)
    budget.reserve(100, 0.01, usd_per_prompt_token=0.001)
    assert budget.reserved_usd == pytest.approx(0.22)
    budget.observe(100, 300)
    budget.observe(100, 100)
    assert budget.prompt_ratio == 2.0
    assert budget.reserved_usd == pytest.approx(0.42)  # both rows, at twice their estimate
    with pytest.raises(BudgetReached):
        budget.reserve(300, 0.01, usd_per_prompt_token=0.001)  # 0.42 + 0.61 > 1
    assert budget.refused_usd == pytest.approx(0.61)
    budget.settle(100, 0.01, actual_usd=0.3)
    assert (budget.spent_usd, budget.reserved_usd) == (pytest.approx(0.3), pytest.approx(0.21))
    budget.observe(1000, 0)  # billed less than estimated: never valued below the estimate
    assert budget.prompt_ratio == 1.0


def test_with_a_cap_the_first_row_goes_alone() -> None:
    async def main() -> list[str]:
        budget = Budget(1.0)
        order: list[str] = []

        async def row(name: str, delay: float) -> None:
            await budget.ready(0, 0.0, 0.0)
            budget.reserve(10, 0.0, 0.0)
            order.append(f"{name} sent")
            await asyncio.sleep(delay)
            budget.settle(10, 0.0, 0.0)
            order.append(f"{name} answered")

        await asyncio.gather(row("first", 0.05), row("second", 0.0))
        return order

    assert asyncio.run(main()) == ["first sent", "first answered", "second sent", "second answered"]


def test_a_row_that_does_not_fit_beside_rows_in_flight_waits_for_them(tmp_path: Path) -> None:
    """With many rows in flight, their worst cases add up long before their real costs
    do: the run waits for them to settle rather than stopping far below the cap."""

    def caption(out: str, *extra: str) -> tuple[int, str, int]:
        result = CliRunner().invoke(
            cli, ["run", str(SAMPLES), "-o", str(tmp_path / out), "--endpoint", "fake", *extra]
        )
        return result.exit_code, result.output, len(results(tmp_path / out))

    # The whole job costs about $0.0104; each row reserves about $0.012 (1000 tokens out).
    code, output, rows = caption("roomy", "--max-cost", "0.05", "--concurrency", "6")
    assert (code, rows) == (0, 6), output
    one_at_a_time = caption("serial", "--max-cost", "0.02", "--concurrency", "1")
    code, output, rows = caption("tight", "--max-cost", "0.02", "--concurrency", "6")
    assert code == 4
    assert rows == one_at_a_time[2] >= 4  # as far as sending one at a time gets
    # The stop message adds up: spent + the next reservation is past the cap.
    total = float(re.search(r"the next row would make it \$([0-9.]+)", output)[1])
    spent = float(re.search(r"reached with \$([0-9.]+) spent", output)[1])
    assert total > 0.02 >= spent
