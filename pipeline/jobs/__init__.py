"""A job from start to end, over the other packages: `caption run` (`run.py`), what a
run tells its user (`outcome.py`), and `caption estimate` / `run --dry-run`
(`dryrun.py`)."""
