"""What a job will cost before anything is sent: image and text tokens
(`tokens.py`), image sizes (`sizes.py`), and the estimate per model (`estimate.py`)."""
