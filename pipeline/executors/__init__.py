"""Executors: where the unit of work (`pipeline.work.caption_rows`) runs. `local` runs it
on one event loop in this process."""
