"""What an output folder says to its operator: `caption status` (`status.py`) and the
HTML report (`page.py`, with its SVG charts in `charts.py`)."""
