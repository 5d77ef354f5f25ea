"""The chat-completions request body for one image, serialised once per job: its shape
is the model family's (`providers/`), its values the job's `[request]` settings. `run`
sends it; `estimate` counts what it would send.
"""

from __future__ import annotations

import json
import mimetypes
from dataclasses import dataclass
from urllib.parse import urlparse

from pipeline.config.settings import RequestConfig
from pipeline.errors import UsageError
from pipeline.http.providers import provider_for

# Stand where the image (its URL, data URL or base64) and its MIME type go while the
# job's body is serialised once.
_IMAGE = "\x00caption:image\x00"
_MIME = "\x00caption:mime\x00"


@dataclass(frozen=True, slots=True)
class BodyTemplate:
    """The job's request body as JSON bytes, serialised once, with slots for the image and
    its MIME type (a family may name the type beside the image: gemini's `mime_type`).

    Every request differs only in its image. A local image's base64, whose alphabet needs
    no escaping in JSON, is spliced in as it is: a photo never goes through json.dumps,
    nor is copied whole for it.
    """

    pieces: tuple[bytes | str, ...]  # JSON bytes, and the slot names between them
    inline: str  # "data_url" or "base64": how a local image is written into its slot

    @classmethod
    def for_request(cls, req: RequestConfig) -> BodyTemplate:
        text = json.dumps(provider_for(req.model).payload(req, _IMAGE, _MIME))
        if text.count(json.dumps(_IMAGE)) != 1:
            raise UsageError(f"[request] a prompt may not hold {_IMAGE!r}: it marks the image")
        pieces: list[bytes | str] = []
        for i, chunk in enumerate(text.split(json.dumps(_IMAGE))):
            for j, part in enumerate(chunk.split(json.dumps(_MIME))):
                if j:
                    pieces.append("mime")
                pieces.append(part.encode())
            if i == 0:
                pieces.append("image")
        return cls(pieces=tuple(pieces), inline=req.inline_images)

    def _join(self, image: list[bytes], mime: str) -> bytes:
        quoted = json.dumps(mime).encode()
        out: list[bytes] = []
        for piece in self.pieces:
            if piece == "image":
                out.extend((b'"', *image, b'"'))
            elif piece == "mime":
                out.append(quoted)
            else:
                assert isinstance(piece, bytes)
                out.append(piece)
        return b"".join(out)

    def with_url(self, url: str) -> bytes:
        """The body for an image the endpoint fetches itself."""
        return self._join([json.dumps(url)[1:-1].encode()], mime_of_url(url))

    def with_data(self, mime: str, encoded: bytes) -> bytes:
        """The body for a local image: `encoded` is its base64, sent as a data URL (or as
        bare base64, if `[request] inline_images` says so)."""
        if self.inline == "base64":
            return self._join([encoded], mime)
        return self._join([b"data:", mime.encode(), b";base64,", encoded], mime)


def mime_of_url(url: str) -> str:
    """An image URL's type, by its name: JPEG when the name does not say."""
    guessed, _ = mimetypes.guess_type(urlparse(url).path)
    return guessed if guessed and guessed.startswith("image/") else "image/jpeg"


def worst_case_completion_tokens(req: RequestConfig) -> int:
    """Every choice may run to max_tokens, and every choice is billed."""
    return req.n * req.max_tokens
