"""One row and many, whatever executes them: images prepared and resized
(`prepare.py`, `resize.py`), one row captioned with retries and the budget
(`captioner.py`, `budget.py`), and the unit of work over many rows (`work.py`)."""
