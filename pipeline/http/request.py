"""The chat-completions request body for one image, serialised once per job: its shape
is the model family's (`providers/`), its values the job's `[request]` settings. `run`
sends it; `estimate` counts what it would send.
"""

from __future__ import annotations

import json
import mimetypes
import re
from dataclasses import dataclass, replace
from urllib.parse import urlparse

from pipeline.config.settings import RequestConfig
from pipeline.errors import UsageError
from pipeline.http.providers import provider_for

# Stand where the image (its URL, data URL or base64) and its MIME type go while the
# job's body is serialised once.
_IMAGE = "\x00caption:image\x00"
_MIME = "\x00caption:mime\x00"
_PROMPT = "\x00caption:prompt\x00"
# A slot's text in the serialised body: the image and the type are whole strings (quotes
# included); the prompt may be part of one (nova's adds its JSON instruction after it).
_SLOTS = {
    json.dumps(_IMAGE): "image",
    json.dumps(_MIME): "mime",
    json.dumps(_PROMPT)[1:-1]: "prompt",
}
_SLOT_RE = re.compile("|".join(re.escape(k) for k in _SLOTS))


@dataclass(frozen=True, slots=True)
class BodyTemplate:
    """The job's request body as JSON bytes, serialised once, with slots for the image, its
    MIME type (a family may name the type beside the image: gemini's `mime_type`) and the
    prompt (the job's, or a row's own: a manifest's `ROW_PROMPT` column, which a
    comparison's judge uses).

    Every request differs only in its image (and the prompt, for such rows). A local image's base64, whose alphabet needs
    no escaping in JSON, is spliced in as it is: a photo never goes through json.dumps,
    nor is copied whole for it.
    """

    pieces: tuple[bytes | str, ...]  # JSON bytes, and the slot names between them
    inline: str  # "data_url" or "base64": how a local image is written into its slot
    prompt: bytes  # the job's prompt, escaped for its slot

    @classmethod
    def for_request(cls, req: RequestConfig) -> BodyTemplate:
        slotted = replace(req, prompt=_PROMPT)
        text = json.dumps(provider_for(req.model).payload(slotted, _IMAGE, _MIME))
        found = _SLOT_RE.findall(text)
        if found.count(json.dumps(_IMAGE)) != 1 or found.count(json.dumps(_PROMPT)[1:-1]) != 1:
            raise UsageError("[request] a prompt may not hold caption's slot markers")
        pieces: list[bytes | str] = []
        at = 0
        for match in _SLOT_RE.finditer(text):
            pieces += [text[at : match.start()].encode(), _SLOTS[match.group()]]
            at = match.end()
        pieces.append(text[at:].encode())
        return cls(pieces=tuple(pieces), inline=req.inline_images, prompt=_escaped(req.prompt))

    def _join(self, image: list[bytes], mime: str, prompt: str | None) -> bytes:
        quoted = json.dumps(mime).encode()
        said = self.prompt if prompt is None else _escaped(prompt)
        out: list[bytes] = []
        for piece in self.pieces:
            if piece == "image":
                out.extend((b'"', *image, b'"'))
            elif piece == "prompt":
                out.append(said)
            elif piece == "mime":
                out.append(quoted)
            else:
                assert isinstance(piece, bytes)
                out.append(piece)
        return b"".join(out)

    def with_url(self, url: str, prompt: str | None = None) -> bytes:
        """The body for an image the endpoint fetches itself (`prompt`: a row's own)."""
        return self._join([json.dumps(url)[1:-1].encode()], mime_of_url(url), prompt)

    def with_data(self, mime: str, encoded: bytes, prompt: str | None = None) -> bytes:
        """The body for a local image: `encoded` is its base64, sent as a data URL (or as
        bare base64, if `[request] inline_images` says so)."""
        if self.inline == "base64":
            return self._join([encoded], mime, prompt)
        return self._join([b"data:", mime.encode(), b";base64,", encoded], mime, prompt)


def _escaped(text: str) -> bytes:
    return json.dumps(text)[1:-1].encode()


def mime_of_url(url: str) -> str:
    """An image URL's type, by its name: JPEG when the name does not say."""
    guessed, _ = mimetypes.guess_type(urlparse(url).path)
    return guessed if guessed and guessed.startswith("image/") else "image/jpeg"


def worst_case_completion_tokens(req: RequestConfig) -> int:
    """Every choice may run to max_tokens, and every choice is billed."""
    return req.n * req.max_tokens
