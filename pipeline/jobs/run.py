"""`caption run`: manifest -> pending rows -> worker pool -> writer, resumable.

The shape of a run:

1. check the output folder: same job (fingerprint) or a new folder;
2. (re)build the manifest from the sources, so a grown source adds rows;
3. recover from a crash (fold journals) and compact, then scan what is done;
4. stream the pending rows through an executor (`pipeline.executors.local`), which runs
   the engine-agnostic unit of work (`pipeline.engine.work.caption_rows`): rows in, result rows
   out through a journal-protected `ShardWriter`;
5. record the totals in run.json and report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from pipeline.config.apikey import read_api_key
from pipeline.config.identity import fingerprint, job_definition
from pipeline.config.prices import price_entry
from pipeline.config.settings import JobConfig
from pipeline.dedupe.carry import carry_answers
from pipeline.dedupe.ingest import add_hashes, previous_hashes
from pipeline.dedupe.plan import NearPlan, empty_plan, plan_manifest
from pipeline.engine.budget import Budget
from pipeline.engine.work import Tally
from pipeline.errors import (
    EXIT_STORAGE,
    StorageError,
    UsageError,
)
from pipeline.executors import LOCAL, ExecutorSpec, executor_for
from pipeline.executors.base import Executed, Work
from pipeline.io.rowbits import RowBits
from pipeline.io.storage import check_scheme, is_remote
from pipeline.jobs.outcome import Counted, exit_code_of, run_record, stop_message, summary_line
from pipeline.output import books
from pipeline.output.books import Done
from pipeline.output.current import changed_rows, signatures
from pipeline.output.folder import OutputDir, utc_now
from pipeline.output.marks import Marks, ids_at, mark
from pipeline.output.merge import merge_small_shards
from pipeline.output.mirror import BucketFolder
from pipeline.output.upgrade import needs_rehash, rehash_ids, unify_shards
from pipeline.records import ManifestRow
from pipeline.sources.ids import ID_VERSION, PATH_IDS, RowSpec
from pipeline.sources.manifest import (
    IngestSummary,
    is_manifest,
    read_manifest,
    sample_rows,
    write_manifest,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RunOutcome:
    exit_code: int
    summary: str
    message: str | None = None  # one line for stderr when the run stopped early
    tally: Tally = field(default_factory=Tally)
    stopped: str = ""  # why the run stopped early: fatal, budget, interrupted, storage
    prompt_ratio: float | None = None  # billed over estimated prompt tokens, as measured


def _prepare_manifest(
    out: OutputDir,
    sources: list[str],
    spec: RowSpec,
    done: Done,
    accept_new_source: bool,
    before: list[str] | None,
    given_manifest: bool,
) -> tuple[IngestSummary | None, Marks | None]:
    """Build the manifest beside the old one and swap it in, unless the folder holds
    results and the new manifest shares no id with them: that is another dataset, or the
    same files moved (ids are hashed from each file's real path), and sending it would
    pay for every row again. With it, the new manifest's marks, when that check made them."""
    if len(sources) == 1 and out.is_own_manifest(Path(sources[0])):
        return None, None  # rerun over its own manifest (by its legacy name too, now renamed)
    staged = out.staged_manifest()
    summary = marks = None
    if given_manifest:
        out.copy_in(sources[0], staged)
    else:
        summary = write_manifest(sources, staged, spec)
        log.info("%s", summary.line())
    if done.rows and not accept_new_source:
        marks = mark(staged, done.ids)
    if marks is not None and marks.removed == len(done.ids):
        staged.unlink()
        earlier = " ".join(before) if before else "its earlier sources"
        raise UsageError(
            f"{out.label} holds {done.rows} results of {earlier}, and none of their ids is "
            f"among the rows of {' '.join(sources)}: another dataset, or the same files "
            "moved or copied (ids are hashed from each file's real path; --id-from content "
            "hashes the bytes). Use a new output folder, or add --accept-new-source to add "
            "these rows to this folder anyway"
        )
    out.adopt_manifest(staged)
    return summary, marks


def _near_plan(
    out: OutputDir,
    config: JobConfig,
    hashed: pa.Table | None,
    answered: RowBits,
    skip: RowBits,
    kept: bool,
) -> NearPlan:
    """Under `--dedupe near`: hash the manifest's new and changed images (none when the
    manifest was `kept` as it was), then plan which pending rows (not in `skip`) follow
    another's answer (`answered`: manifest rows with an answer to carry;
    `pipeline/dedupe/`)."""
    if not config.dedupe.near:
        return empty_plan()
    if not (kept and hashed is not None):  # a manifest of last night's already has them
        now = add_hashes(out.manifest, hashed)
        if now:
            log.info("--dedupe near: hashed %d image(s)", now)
    plan = plan_manifest(out.manifest, answered, skip, config.dedupe.distance)
    if plan.followers:
        log.info(
            "--dedupe near: %d row(s) in %d group(s) of near-copies wait for their group's answer",
            plan.followers,
            plan.groups,
        )
    return plan


_HELD_IDS = 1 << 22  # ids of resent rows passed to compaction; past that it finds them


def _ids_at(manifest: Path, rows: RowBits) -> pa.Array | None:
    """The ids of the manifest's marked rows, or None when there are too many to hold."""
    if rows.count() > _HELD_IDS:
        return None
    return ids_at(manifest, rows.positions())


def run_job(
    sources: list[str],
    out_path: Path | str,
    config: JobConfig,
    *,
    retry_errors: bool = False,
    show_progress: bool = True,
    spec: RowSpec = PATH_IDS,
    sample: int = 0,
    accept_new_source: bool = False,
    label: str | None = None,
    api_key: str | None = None,
    handle_signals: bool = True,
    executor: ExecutorSpec = LOCAL,
    on_lost: list[Callable[[str], None]] | None = None,
) -> RunOutcome:
    """Run the job; with `sample`, only that many pending rows, chosen at random (a pilot).
    With `accept_new_source`, sources that share no id with the folder's results are
    added to it rather than refused. `out_path` may be a bucket URL (s3://, gs://).
    `api_key` overrides the environment; `handle_signals` False (a library call) leaves
    the process's signal handlers alone. `on_lost` (a bucket folder's mirror's) is where
    the run subscribes to be told to stop sending when the folder's lock is lost."""
    started = time.perf_counter()
    if not str(out_path).strip():
        # Path("") is the working folder: a job would write its shards there.
        raise UsageError("the output folder is an empty path; name a folder (-o OUT)")
    check_scheme(str(out_path))  # ftp://... is refused, not made a local folder named ftp:
    executor_for(executor).check(str(out_path), sources)
    if is_remote(str(out_path)):
        # A bucket folder: the run works on its local mirror (`output/mirror.py`), which holds
        # the bucket's lock and pushes the folder to it every few seconds and at the end.
        bucket = BucketFolder(str(out_path))
        with bucket.session() as local:
            return run_job(
                sources,
                local,
                config,
                retry_errors=retry_errors,
                show_progress=show_progress,
                spec=spec,
                sample=sample,
                accept_new_source=accept_new_source,
                label=bucket.url,
                api_key=api_key,
                handle_signals=handle_signals,
                executor=executor,
                on_lost=bucket.on_lost,
            )
    out = OutputDir(Path(out_path), label=label)
    if out.exists():
        out.check_fingerprint(config)  # before anything else: refuse a changed job at once
    key = read_api_key(config, api_key)
    created = not out.exists()
    out.create()
    try:
        with out.lock():
            return _run_locked(
                out,
                sources,
                config,
                api_key=key,
                retry_errors=retry_errors,
                show_progress=show_progress,
                spec=spec,
                sample=sample,
                accept_new_source=accept_new_source,
                started=started,
                handle_signals=handle_signals,
                executor=executor,
                on_lost=on_lost,
            )
    except UsageError:
        if created:
            out.remove_if_unused()  # a missing or empty source leaves no folder behind
        raise


def _run_locked(
    out: OutputDir,
    sources: list[str],
    config: JobConfig,
    *,
    api_key: str,
    retry_errors: bool,
    show_progress: bool,
    spec: RowSpec,
    sample: int,
    accept_new_source: bool,
    started: float,
    handle_signals: bool,
    executor: ExecutorSpec,
    on_lost: list[Callable[[str], None]] | None,
) -> RunOutcome:
    previous = out.check_fingerprint(config)  # again, now that no other run can write
    out.wait_for_workers()  # nor a killed Ray run's tasks
    from_manifest = len(sources) == 1 and is_manifest(sources[0])
    scheme = "manifest" if from_manifest else spec.scheme
    out.check_ids(previous, scheme)
    out.migrate()
    out.recover()
    unify_shards(out)  # against the manifest the older shards were written with
    if needs_rehash(previous):
        rehash_ids(out)
    done = books.settle(out)  # one row per id: superseded attempts to the ledger
    before = (previous or {}).get("sources")
    # A rerun over the folder's own manifest keeps it as it is: nothing to compare.
    kept = len(sources) == 1 and out.is_own_manifest(Path(sources[0]))
    signed = None if kept else signatures(out.manifest)  # the files as they were
    hashed = previous_hashes(out.manifest) if config.dedupe.near else None
    ingest, marks = _prepare_manifest(
        out, sources, spec, done, accept_new_source, before, given_manifest=from_manifest
    )
    if marks is None:
        marks = mark(out.manifest, done.ids)
    done.ids.close()  # the marks are all a run needs of the done ids
    changed, changed_at = changed_rows(signed, out, marks.done())
    skip = marks.ok.copy() if retry_errors else marks.done()
    answered = marks.ok.copy()
    if len(changed):  # replaced at the same path: sent again, the old answer superseded
        log.info("%d file(s) changed since the last run: captioned again", len(changed))
        skip.clear(changed_at)
        answered.clear(changed_at)  # a replaced file's old answer is no one's to carry
    near = _near_plan(out, config, hashed, answered, skip, kept)
    skip.set(near.follower_rows)  # not sent: each carries its group's answer once there is one
    rows: Iterable[ManifestRow] = read_manifest(out.manifest, skip=skip)
    pending = skip.rows - skip.count()
    already = skip.rows - pending
    retried = pending - marks.pending if retry_errors else 0
    total = pending  # rows this run sends: all pending ones, or a pilot's sample of them
    if sample:
        rows = sample_rows(rows, sample)
        total = len(rows)

    definition = job_definition(config)
    meta = previous or {"version": 1, "created_at": utc_now(), "runs": []}
    meta.update({"fingerprint": fingerprint(definition), "job": definition})
    meta["sources"] = sources  # as given: the guard above names them
    meta["ids"] = {"from": scheme, "version": ID_VERSION}
    # The price the rows are costed at, kept for `caption status` and for audits.
    meta["price"] = price_entry(config.prices[config.request.model])
    out.write_run_json(meta)

    budget = Budget(config.limits.max_cost_usd, spent_usd=done.cost_usd, measure=sample > 0)
    run_started = utc_now()
    executed = Executed()
    if total:
        work = Work(
            config, out, iter(rows), api_key, budget, total, show_progress, handle_signals, on_lost
        )
        executed = executor_for(executor).run(work)
        del work
    compacted = bool(retry_errors or len(changed))
    # Rows with an answer before that were sent again: the only ids that can now be in
    # the shards twice, so compaction looks at these alone (when not too many to hold).
    resent = (marks.done() & ~skip) if compacted else None
    started_with = done  # the books at the start (its ids let go above)
    del rows, skip, answered, marks, done
    tally, stop, unsaved = executed.tally, executed.stop, executed.unsaved
    wall = time.perf_counter() - started
    remaining = pending - tally.done
    try:
        carried = 0
        if near.followers and stop.kind != "storage":
            carried = carry_answers(out, near, config.output.rows_per_shard)
        remaining += near.followers - carried  # copies whose leader has no answer yet
        if resent is not None:
            books.compact(out, _ids_at(out.manifest, resent))
        merged = 0
        if stop.kind != "storage":  # a full disk is no place to rewrite shards
            merged = merge_small_shards(out, config.output.rows_per_shard)
        # Nothing was written (nothing was pending): the books are as the start found them.
        unchanged = not (total or carried or merged or compacted)
        final = started_with if unchanged else books.scan(out, compacted=compacted)
        exit_code = exit_code_of(stop, final.errors)
        meta["runs"].append(
            run_record(
                config, run_started, total, tally, stop, exit_code, wall, len(changed), carried
            )
        )
        meta["totals"] = {
            "manifest_rows": out.manifest_count(),
            **final.totals().to_json(),
            "superseded_attempts": final.superseded,
        }
        out.write_run_json(meta)
    except StorageError:
        if stop.kind != "storage":
            raise
        # The disk is still full: the rows are safe in shards and journals, and the next
        # run, once there is space, brings run.json up to date.
        final = books.scan(out, include_journals=True)
        exit_code = EXIT_STORAGE

    summary = summary_line(
        tally,
        Counted(
            total,
            retried,
            already - near.followers,
            remaining,
            len(changed),
            carried,
            # Current rows the manifest does not hold: done ids outside it.
            removed=max(0, final.rows - (out.manifest_count() - remaining)),
        ),
        final,
        wall,
        ingest,
        config,
        out.label,
    )
    message = stop_message(stop, out.label, remaining, budget, unsaved, config)
    return RunOutcome(exit_code, summary, message, tally, stop.kind, budget.learned_ratio)
