"""`caption estimate` and `caption run --dry-run`: from sources (or a manifest, or an
output folder) to an estimate, with an optional pilot of real requests, and the checks a
real run would make, with nothing sent or written."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.config.identity import changed_settings, fingerprint, job_definition
from pipeline.config.settings import JobConfig
from pipeline.cost.estimate import Estimate, estimate
from pipeline.dedupe.ingest import hashed_batches, previous_hashes
from pipeline.dedupe.plan import NearPlan, plan_batches
from pipeline.errors import UsageError
from pipeline.io.storage import bucket_error, is_remote, join, read_bytes
from pipeline.output import books
from pipeline.output.books import read_shard
from pipeline.output.folder import OutputDir
from pipeline.output.layout import RUN_JSON, STATE_DIR
from pipeline.output.mirror import readable
from pipeline.records import ManifestRow
from pipeline.sources.byid import only_ids, without_done
from pipeline.sources.ids import PATH_IDS, RowSpec
from pipeline.sources.manifest import Counts, sample_rows


def source_batches(
    sources: list[str], spec: RowSpec = PATH_IDS, counts: Counts | None = None
) -> Iterator[pa.RecordBatch]:
    """The manifest rows of `sources` as record batches, without writing anything."""
    import pyarrow.parquet as pq

    from pipeline.sources.lists import record_batch
    from pipeline.sources.manifest import is_manifest, iter_manifest_rows

    if len(sources) == 1 and is_manifest(sources[0]):
        yield from pq.ParquetFile(os.path.abspath(sources[0])).iter_batches(batch_size=65_536)
        return
    for rows in iter_manifest_rows(sources, spec, counts):
        yield record_batch(rows)


def observed_output(out: OutputDir, config: JobConfig) -> tuple[float, int] | None:
    """Mean completion tokens per ok row in an output folder of the same job, if any."""
    import pyarrow.compute as pc

    meta = out.read_run_json() if out.exists() else None
    if not meta or meta.get("fingerprint") != fingerprint(job_definition(config)):
        return None
    tables = [read_shard(s, columns=["status", "completion_tokens"]) for s in out.shards()]
    if not tables:
        return None
    table = pa.concat_tables(tables)
    ok = table.filter(pc.equal(table["status"], "ok"))
    if ok.num_rows == 0:
        return None
    return pc.mean(ok["completion_tokens"]).as_py(), ok.num_rows


def folder_job(output: Path | str) -> dict[str, Any] | None:
    """The job definition an output folder (local or in a bucket) recorded, if any. In a
    bucket only its run.json is read: the estimate copies the folder once, later."""
    if not is_remote(str(output)):
        meta = OutputDir(Path(output)).read_run_json()
    else:
        url = join(str(output), STATE_DIR, RUN_JSON)
        try:
            meta = json.loads(read_bytes(url))
        except FileNotFoundError:
            meta = None
        except ValueError as exc:
            raise UsageError(f"{url}: unreadable ({exc})") from None
        except Exception as exc:
            raise bucket_error(url, exc) from None
    job = meta.get("job") if isinstance(meta, dict) else None
    return job if isinstance(job, dict) else None


def estimate_sources(
    sources: list[str],
    config: JobConfig,
    models: list[str],
    *,
    output: Path | str | None = None,
    assume_size: tuple[int, int] | None = None,
    probe_urls: bool = False,
    pilot: int = 0,
    spec: RowSpec = PATH_IDS,
) -> Estimate:
    """Estimate a job over `sources`; with `output`, only the rows it does not hold yet,
    and the expected output length from what it already holds.

    A pilot sends `pilot` real requests on a random sample first. With `output` it is the
    first slice of the real job, written there like any run, so the run never pays for
    those rows again; without, its answers are kept only long enough to be measured.
    """
    pilot_report: dict[str, Any] | None = None
    pilot_expected: tuple[float, str] | None = None
    if pilot:
        pilot_report, mean = _run_pilot(sources, config, pilot, output, spec)
        if mean is not None:
            pilot_expected = (
                mean,
                f"mean of a pilot of {pilot_report['ok']} requests on {config.request.model}",
            )
    counts = Counts()
    found = [0]  # source rows before the folder's done rows are left out

    def counted(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            found[0] += batch.num_rows
            yield batch

    batches: Iterable[pa.RecordBatch] = counted(source_batches(sources, spec, counts))
    observed: tuple[float, str] | None = None
    notes: list[str] = []
    done: books.Done | None = None  # the output folder's, if it has any
    hashed: pa.Table | None = None  # its manifest's perceptual hashes (--dedupe near)
    if output is not None:
        with readable(str(output), must_exist=False) as folder:
            out = OutputDir(folder)
            if out.exists() and out.read_run_json() is not None:
                done = books.scan(out, include_journals=True)
                hashed = previous_hashes(out.manifest) if config.dedupe.near else None
                if done.ok + done.errors:
                    batches = without_done(batches, done.id_array())
                    notes.append(
                        f"{done.ok + done.errors} rows already done in {output} are not counted"
                    )
                seen = observed_output(out, config)
                if seen is not None:
                    observed = (seen[0], f"mean of {seen[1]} rows already answered in {output}")
                elif done.ok and (job := (out.read_run_json() or {}).get("job")):
                    changed = changed_settings(job, job_definition(config))
                    differs = ", ".join(changed) or "its fingerprint"
                    notes.append(
                        f"the answers in {output} are of another job (it differs in "
                        f"{differs}), so their length is not the expected output"
                    )
    near: tuple[NearPlan, Estimate] | None = None
    if config.dedupe.near:
        near = _near_saving(sources, spec, config, models, done, hashed, assume_size, probe_urls)
        batches = without_done(batches, near[0].follower_ids)
    result = estimate(
        batches,
        config,
        models,
        assume_size=assume_size,
        probe_urls=probe_urls,
        expected_output=pilot_expected or observed,
        prompt_ratios=_learned(pilot_report),
    )
    if near is not None:
        result.dedupe = dedupe_summary(config.dedupe.distance, *near)
    result.pilot = pilot_report
    result.duplicates = counts.duplicates
    result.found = found[0]
    result.notes.extend(notes)
    return result


def _near_saving(
    sources: list[str],
    spec: RowSpec,
    config: JobConfig,
    models: list[str],
    done: books.Done | None,
    before: pa.Table | None,
    assume_size: tuple[int, int] | None,
    probe_urls: bool,
) -> tuple[NearPlan, Estimate]:
    """Under `--dedupe near`: which rows would carry a near-copy's answer (their images are
    read and hashed; the hashes of an output folder's manifest, `before`, are reused), and
    what sending them would have cost: the estimate of those rows alone. `done`: what the
    output folder holds, if any."""
    answered = skip = pa.nulls(0, pa.string())
    if done is not None:
        answered, skip = done.id_array(ok_only=True), done.id_array()
    hashed = hashed_batches(source_batches(sources, spec), before)
    plan = plan_batches(hashed, answered, skip, config.dedupe.distance)
    saved = estimate(
        only_ids(source_batches(sources, spec), plan.follower_ids),
        config,
        models,
        assume_size=assume_size,
        probe_urls=probe_urls,
    )
    return plan, saved


def dedupe_summary(distance: int, plan: NearPlan, saved: Estimate) -> dict[str, Any]:
    """What `--dedupe near` saves, for the estimate's line and its JSON."""
    return {
        "distance": distance,
        "near_copies": plan.followers,
        "groups": plan.groups,
        "requests_saved": plan.followers,
        "saved_expected_usd": {m.model: m.cost_expected_usd for m in saved.models},
        "saved_max_usd": {m.model: m.cost_max_usd for m in saved.models},
    }


def _learned(pilot: dict[str, Any] | None) -> dict[str, float]:
    """The pilot model's billed-to-estimated prompt ratio, for the estimate to scale by."""
    if not pilot or not pilot.get("prompt_tokens_ratio"):
        return {}
    return {pilot["model"]: pilot["prompt_tokens_ratio"]}


def _run_pilot(
    sources: list[str],
    config: JobConfig,
    n: int,
    output: Path | str | None,
    spec: RowSpec,
) -> tuple[dict[str, Any], float | None]:
    """Send `n` real requests on a random sample; (report, mean completion tokens)."""
    from pipeline.jobs.pilot import EXIT_PILOT_OK, run_pilot
    from pipeline.jobs.run import run_job

    if output is not None:
        outcome = run_job(
            sources,
            output,
            config,
            sample=n,
            show_progress=False,
            spec=spec,
        )
        if outcome.exit_code not in EXIT_PILOT_OK:
            raise UsageError(f"the pilot stopped: {outcome.message or outcome.summary}")
        tally, ratio = outcome.tally, outcome.prompt_ratio
    else:
        rows = sample_rows(
            (
                ManifestRow.from_dict(r)
                for b in source_batches(sources, spec)
                for r in b.to_pylist()
            ),
            n,
        )
        tally, ratio = run_pilot(config, rows)
    mean = tally.completion_tokens / tally.ok if tally.ok else None
    report = {
        "model": config.request.model,
        "requests": tally.done,
        "ok": tally.ok,
        "completion_tokens_mean": mean or 0.0,
        "prompt_tokens": tally.prompt_tokens,
        "prompt_tokens_ratio": ratio,  # billed over estimated
        "cost_usd": tally.cost_usd,
        "written_to": str(output) if output is not None else None,
    }
    return report, mean


def dry_run(
    sources: list[str],
    output: Path,
    config: JobConfig,
    spec: RowSpec = PATH_IDS,
) -> tuple[Estimate, list[str], int]:
    """Everything a real run would check, and its estimate, with nothing sent or written.

    Returns the estimate, the problems found, and the exit code: 0 ready; 1 some rows would
    be error rows (unreadable files); 2 the run could not start (key, output folder).
    """
    from pipeline.config.apikey import read_api_key

    problems: list[str] = []
    exit_code = 0
    out = OutputDir(output)
    if out.exists():
        out.check_fingerprint(config)  # a different job: that error alone, no estimate
    try:
        read_api_key(config)
    except UsageError as exc:
        problems.append(str(exc))
        exit_code = 2
    report = estimate_sources(sources, config, [], output=output, spec=spec)
    if report.found == 0 and not report.skipped_count:
        problems.append(
            f"no images found in {' '.join(sources)}: `caption run` would refuse this source"
        )
        exit_code = 2
    if report.skipped_count:
        problems.append(f"{report.skipped_count} file(s) would be error rows (listed above)")
        exit_code = max(exit_code, 1)
    return report, problems, exit_code
