"""caption: batch image captioning against OpenAI-compatible chat-completions endpoints."""

__version__ = "0.1.0"
