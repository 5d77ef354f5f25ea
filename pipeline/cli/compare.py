"""`caption compare`: which model and prompt to run, by quality per dollar, on a sample.

Its settings come from flags, over a `[compare]` table of the job's TOML (`sample`,
`models`, `prompt_files`, `truth`, `seed`, `margin`, `judge`), over the defaults; the job's other
settings (endpoint, schema, limits...) as for `run`.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

import click

from pipeline.cli.options import job_options, load_job, row_options
from pipeline.errors import UsageError
from pipeline.sources.ids import RowSpec

COMPARE_KEYS = {"sample", "models", "prompt_files", "truth", "seed", "margin", "judge"}


def _table(config_path: Path | None) -> dict[str, Any]:
    """The `[compare]` table of the job's TOML, checked."""
    if config_path is None:
        return {}
    try:
        raw = tomllib.loads(config_path.read_text()).get("compare", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"config {config_path}: not readable ({exc})") from None
    unknown = set(raw) - COMPARE_KEYS
    if unknown:
        raise UsageError(
            f"{config_path}: [compare] {sorted(unknown)[0]}: unknown key; allowed: "
            f"{', '.join(sorted(COMPARE_KEYS))}"
        )
    return dict(raw)


def parse_truth(given: list[str] | dict[str, str]) -> dict[str, str]:
    """`score=score_truth` pairs (or a table of them): structured field -> column."""
    if isinstance(given, dict):
        return {str(k): str(v) for k, v in given.items()}
    out = {}
    for item in given:
        field, _, column = item.partition("=")
        if not field or not column:
            raise UsageError(f"--truth {item!r}: must be FIELD=COLUMN (e.g. score=score_truth)")
        out[field] = column
    return out


def read_prompts(paths: list[Path]) -> list[tuple[str, str]]:
    prompts = []
    for path in paths:
        try:
            text = Path(path).read_text().strip()
        except OSError as exc:
            raise UsageError(f"--prompt-file {path}: cannot read ({exc.strerror})") from None
        if not text:
            raise UsageError(f"--prompt-file {path}: empty")
        prompts.append((Path(path).stem, text))
    return prompts


@click.command(short_help="Compare models and prompts by quality per dollar, on a sample.")
@click.argument("sources", nargs=-1, required=True)
@click.option("-o", "--output", required=True, help="Folder of the comparison (CMP).")
@click.option("--sample", "sample_size", type=int, help="Images in the sample (required).")
@click.option(
    "--prompt-file",
    "prompt_files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A prompt to compare (its file name names the variant); repeat it.",
)
@click.option(
    "--truth",
    multiple=True,
    metavar="FIELD=COLUMN",
    help="Score a structured field against a column of the source's lists; repeat it.",
)
@click.option("--seed", type=int, help="Seed of the sample (default 0).")
@click.option(
    "--judge",
    metavar="MODEL",
    help="A model that judges free-text captions pairwise, each pair twice in swapped "
    "order; its cost counts against --max-cost.",
)
@click.option(
    "--margin",
    type=float,
    help="Points of quality the recommendation may give up for a lower price (default 2).",
)
@click.option(
    "--dry-run", is_flag=True, help="Print each variant's sample and projected cost; send nothing."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@job_options(models=True)
@row_options
def compare(
    sources: tuple[str, ...],
    output: str,
    sample_size: int | None,
    prompt_files: tuple[Path, ...],
    truth: tuple[str, ...],
    seed: int | None,
    judge: str | None,
    margin: float | None,
    dry_run: bool,
    quiet: bool,
    config_path: Path | None,
    models: tuple[str, ...],
    spec: RowSpec,
    **flags: Any,
) -> None:
    """Run every combination of --model and --prompt-file on one seeded sample of
    SOURCES, as ordinary output folders under -o, and say which is worth its price:
    accuracy against --truth columns, else a --judge's win rate (free-text captions) or
    agreement with the other variants' consensus (structured labels). Writes
    CMP/compare.parquet and CMP/compare.html."""
    from pipeline.jobs.compare import CompareSpec, estimate_compare, run_compare

    table = _table(config_path)
    size = sample_size if sample_size is not None else table.get("sample")
    if not isinstance(size, int):
        raise UsageError("--sample N: how many images to compare on (or [compare] sample)")
    files = list(prompt_files) or [Path(p) for p in table.get("prompt_files", [])]
    cmp_spec = CompareSpec(
        sources=list(sources),
        output=Path(output),
        sample=size,
        models=list(models) or list(table.get("models", [])),
        prompts=read_prompts(files),
        truth=parse_truth(list(truth) or table.get("truth", {})),
        seed=seed if seed is not None else int(table.get("seed", 0)),
        margin=(margin if margin is not None else float(table.get("margin", 2))) / 100,
        judge=judge or table.get("judge"),
        spec=spec,
    )
    config = load_job(config_path, flags)
    if dry_run:
        for row in estimate_compare(cmp_spec, config):
            mark = "" if row["image_tokens_exact"] else " ~"
            click.echo(
                f"{row['variant']}{mark}: sample of {row['sample_images']} at most "
                f"${row['sample_cost_max_usd']:.4f}; all {row['source_images']:,} images at "
                f"most ${row['projected_cost_max_usd']:,.2f}"
            )
        return
    outcome = run_compare(cmp_spec, config, show_progress=not quiet and sys.stderr.isatty())
    from pipeline.jobs.sample import sample_paths
    from pipeline.report.compare_page import write_compare_page

    page = write_compare_page(
        cmp_spec.output, outcome.table, sample_paths(cmp_spec.output)[0], outcome.recommendation
    )
    for f in outcome.table:
        quality = "-" if f.quality is None else f"{f.quality:.3f}"
        click.echo(
            f"{f.variant}: {f.ok}/{f.rows} ok, quality {quality}, ${f.cost_usd:.4f} "
            f"(${f.cost_per_1k_usd:.4f} per 1,000), all images about ${f.projected_cost_usd:,.2f}"
        )
    click.echo(outcome.recommendation)
    click.echo(f"table: {cmp_spec.output / 'compare.parquet'}; page: {page}")
    if outcome.message:
        click.echo(f"caption: {outcome.message}", err=True)
    sys.exit(outcome.exit_code)
