"""Talking to an OpenAI-compatible chat-completions endpoint: the request body
(`request.py`), the client (`client.py`), reading an answer or a stream (`answer.py`,
`stream.py`), and the rate limiter and circuit breaker that pace it (`limiter.py`,
`breaker.py`)."""
