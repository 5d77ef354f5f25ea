"""The chat-completions request body for one image, serialised once per job: its shape
is the model family's (`providers/`), its values the job's `[request]` settings. `run`
sends it; `estimate` counts what it would send.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pipeline.config.settings import RequestConfig
from pipeline.errors import UsageError
from pipeline.http.providers import provider_for

# Stands where the image URL goes while the job's body is serialised once.
_SLOT = "\x00caption:image-url\x00"


@dataclass(frozen=True, slots=True)
class BodyTemplate:
    """The job's request body as JSON bytes, serialised once, with a slot for the image.

    Every request differs only in its image URL. A local image's data URL is base64, whose
    alphabet needs no escaping in JSON, so its bytes are spliced in as they are: a photo
    never goes through json.dumps, nor is copied whole for it.
    """

    before: bytes
    after: bytes

    @classmethod
    def for_request(cls, req: RequestConfig) -> BodyTemplate:
        payload = provider_for(req.model).payload(req, _SLOT)
        parts = json.dumps(payload).split(json.dumps(_SLOT))
        if len(parts) != 2:
            raise UsageError(f"[request] a prompt may not be {_SLOT!r}: it marks the image")
        before, after = parts
        return cls(before=f'{before}"'.encode(), after=f'"{after}'.encode())

    def with_url(self, url: str) -> bytes:
        """The body for an image the endpoint fetches itself."""
        return b"".join((self.before, json.dumps(url)[1:-1].encode(), self.after))

    def with_data(self, mime: str, encoded: bytes) -> bytes:
        """The body for a local image: `encoded` is its base64, sent as a data URL."""
        return b"".join((self.before, b"data:", mime.encode(), b";base64,", encoded, self.after))


def worst_case_completion_tokens(req: RequestConfig) -> int:
    """Every choice may run to max_tokens, and every choice is billed."""
    return req.n * req.max_tokens
