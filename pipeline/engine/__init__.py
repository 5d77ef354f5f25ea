"""The run itself, whatever executes it: images prepared and resized (`prepare.py`,
`resize.py`), one row captioned with retries, budget and labels (`captioner.py`,
`budget.py`, `labels.py`), the unit of work over many rows (`work.py`), and a run from
manifest to summary (`runner.py`, `outcome.py`)."""
