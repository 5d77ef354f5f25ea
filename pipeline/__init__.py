"""caption: batch image captioning against OpenAI-compatible chat-completions endpoints."""

import os

__version__ = "0.1.0"

# numpy (which pyarrow imports) loads OpenBLAS, whose thread pool spins on every core at
# import: 0.1 CPU s here on 2 cores, over 1 s on 16 (numpy/numpy#29193). Nothing here does
# linear algebra. Set before numpy can be imported; a value the user set is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# The Python API (`pipeline/api.py`), loaded on first use so that `import pipeline` (and
# the CLI's start-up) stays light.
__all__ = ["RunResult", "arun", "compare", "estimate", "read_results", "run"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from pipeline import api

        return getattr(api, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
