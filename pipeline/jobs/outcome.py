"""What a run did, in the forms it is told: the exit code, the summary line, the entry
in run.json's history, and the message when it stopped early."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.config.settings import JobConfig
from pipeline.engine.budget import Budget
from pipeline.engine.work import StopReason, Tally
from pipeline.errors import (
    EXIT_BUDGET,
    EXIT_FATAL_API,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_ROW_ERRORS,
    EXIT_STORAGE,
)
from pipeline.output.books import Done
from pipeline.output.folder import utc_now
from pipeline.sources.manifest import IngestSummary


@dataclass(frozen=True, slots=True)
class Counted:
    """The rows of a run: sent (of them retried), already done, still pending."""

    total: int
    retried: int
    already: int
    remaining: int
    changed: int = 0  # of the sent: files replaced since the last run, captioned again
    carried: int = 0  # not sent: near-copies given their group's answer (--dedupe near)
    removed: int = 0  # done rows whose source left the manifest (kept, not current)


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def summary_line(
    tally: Tally,
    rows: Counted,
    final: Done,
    wall: float,
    ingest: IngestSummary | None,
    config: JobConfig,
    label: str,
) -> str:
    total, retried, already, remaining = rows.total, rows.retried, rows.already, rows.remaining
    sent = f"{total - retried} new, {retried} retried" if retried else f"{total} new"
    if rows.changed:
        sent += f", {rows.changed} of them changed since the last run"
    summary = (
        f"{tally.ok} ok, {_count(tally.errors, 'error')} of {sent} "
        f"({already} already done, {remaining} pending"
        + (f", {rows.removed} removed from the sources" if rows.removed else "")
        + "); "
        + (f"{rows.carried} carried a near-copy's answer, unsent; " if rows.carried else "")
        + f"tokens {tally.prompt_tokens} in / {tally.completion_tokens} out; "
        f"${tally.cost_usd:.4f} this run, ${final.cost_usd:.4f} in total; {wall:.1f} s"
    )
    if ingest is not None and (ingest.duplicates or ingest.links_skipped):
        summary += (
            f"; ingest dropped {_count(ingest.duplicates, 'duplicate')} and skipped "
            f"{_count(ingest.links_skipped, 'link')} (loops, second ways to a file, broken)"
        )
    if tally.bytes_sent:
        summary += f"; {_megabytes(tally.bytes_sent)} sent"
        if tally.images.reduced:
            images = tally.images
            how = (
                "to the size the model bills them at"
                if config.request.resize == "model"
                else f"to {config.request.resize} px"
            )
            summary += (
                f" ({images.reduced} image(s) reduced {how}: "
                f"{_megabytes(images.reduced_from)} -> {_megabytes(images.reduced_to)})"
            )
    if tally.usage_estimated:
        summary += (
            f"; the server sent no usage, or none that reads, for {_count(tally.usage_estimated, 'row')}: their "
            "tokens are our own count (usage_source = estimated)"
        )
    if final.errors:
        summary += (
            f"\n{_count(final.errors, 'error row')} in {label}: `caption status {label}` shows "
            "them by kind; rerun with --retry-errors to send them again"
        )
    return summary


def run_record(
    config: JobConfig,
    started_at: str,
    new_rows: int,
    tally: Tally,
    stop: StopReason,
    exit_code: int,
    wall: float,
    changed: int = 0,
    carried: int = 0,
) -> dict[str, Any]:
    """One entry of run.json's history: what this run did, and how fast it was allowed to."""
    limits = config.limits
    return {
        "started_at": started_at,
        "finished_at": utc_now(),
        "new_rows": new_rows,
        "changed": changed,  # of them, files replaced since the run before
        "carried": carried,  # near-copies given their group's answer, not sent
        **tally.to_json(),
        "wall_s": round(wall, 3),
        "bytes_sent": tally.bytes_sent,
        "image_bytes_read": tally.images.read,
        "images_reduced": tally.images.reduced,
        "stopped": stop.kind or None,
        "stop_reason": stop.message[:MAX_REASON] or None,  # its one line, for the report
        "exit_code": exit_code,
        "settings": {
            "concurrency": limits.concurrency,
            "rpm": limits.rpm,
            "tpm": limits.tpm,
            "max_cost_usd": limits.max_cost_usd,
            "resize": config.request.resize,
        },
    }


MAX_REASON = 500


def exit_code_of(stop: StopReason, errors_in_folder: int) -> int:
    """Why the run stopped; else whether the folder, not just this run, holds error rows
    (a nightly rerun that sent nothing must not report success over last night's errors)."""
    if stop.kind == "fatal":
        return EXIT_FATAL_API
    if stop.kind == "budget":
        return EXIT_BUDGET
    if stop.kind == "interrupted":
        return EXIT_INTERRUPTED
    if stop.kind == "storage":
        return EXIT_STORAGE
    return EXIT_ROW_ERRORS if errors_in_folder else EXIT_OK


def stop_message(
    stop: StopReason,
    label: str,
    remaining: int,
    budget: Budget,
    unsaved: int,
    config: JobConfig,
) -> str | None:
    resume = f"rerun the same command to resume ({remaining} rows pending in {label})"
    if stop.kind == "fatal":
        return f"stopped: the endpoint refused the job: {stop.message}; fix it and {resume}"
    if stop.kind == "budget":
        req = config.request
        price = config.prices[req.model]
        held = budget.refused_in_flight_usd
        in_flight = f" and ${held:.4f} held by rows in flight" if held > 0 else ""
        total = budget.spent_usd + held + budget.refused_usd
        return (
            f"stopped: budget cap ${budget.cap_usd:g} reached with ${budget.spent_usd:.4f} "
            f"spent{in_flight}; the next row would make it ${total:.4f}: it reserves up to "
            f"${budget.refused_usd:.4f}, its worst case: "
            f"{req.n} x max_tokens {req.max_tokens} at ${price.output_per_1m:g}/1M output "
            f"plus its prompt (x{budget.prompt_ratio:.2f}, what the server billed against "
            f"the estimate); raise --max-cost and {resume} (a smaller max_tokens reserves "
            "less, but it is another job: it needs a new output folder)"
        )
    if stop.kind == "interrupted":
        return f"stopped: {stop.message}; {resume}"
    if stop.kind == "storage":
        lost = (
            f"{unsaved} answered row(s) could not be saved and will be sent again; "
            if unsaved
            else "every answer received is saved; "
        )
        return f"stopped: {stop.message}; {lost}make room, then {resume}"
    return None
