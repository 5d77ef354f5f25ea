"""Reading and writing bytes wherever they are: local paths and s3:// or gs:// URLs
behind one set of calls (`storage.py`), and the few Arrow helpers that keep pandas out
of the hot paths (`arrow.py`)."""
