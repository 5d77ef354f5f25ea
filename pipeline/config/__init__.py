"""What a job is: its settings from flags and TOML (`settings.py`), the price table
(`prices.py`), structured labels: a JSON Schema checked and turned into columns
(`labels.py`), and the job's identity, the fingerprint a folder is bound to
(`identity.py`)."""
