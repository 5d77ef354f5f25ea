"""Image sources into a manifest: folders walked, globs, list files and buckets read
(`walk.py`, `lists.py`, `entries.py`), stable ids (`ids.py`), the Parquet manifest
(`manifest.py`) and local image headers (`images.py`)."""
