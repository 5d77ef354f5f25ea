"""Model families: each encodes the request body and decodes the answer in its own
documented shape, behind one small interface (`Provider`). The model's prefix picks the
family (`gemini:gemini-2.0-flash-lite`); a model without one, or of a family not listed
here, is spoken to in OpenAI's shapes, which every OpenAI-compatible server reads.

Every decoder also takes OpenAI's `chat.completion` shape, since a gateway may change what
it answers in; an answer in neither shape is a transient error row with the server's text.
"""

from __future__ import annotations

from typing import Any, Protocol

from pipeline.config.prices import family_of
from pipeline.config.settings import RequestConfig
from pipeline.http.answer import Redacts
from pipeline.records import Completion


class Provider(Protocol):
    family: str

    def payload(self, req: RequestConfig, image_url: str, mime_type: str) -> dict[str, Any]:
        """The request body for one image: `image_url` is a URL, a data URL or base64
        (`[request] inline_images`), `mime_type` the image's type."""

    def completion(self, body: Any, status: int, endpoint: Redacts) -> Completion:
        """The completion a successful answer's parsed JSON holds, or a typed ApiError."""


def provider_for(model: str) -> Provider:
    from pipeline.http.providers.gemini import GeminiShapes
    from pipeline.http.providers.nova import NovaShapes
    from pipeline.http.providers.openai import OpenAIShapes
    from pipeline.http.providers.qwen import QwenShapes

    family = family_of(model)
    if family == "gemini":
        return GeminiShapes()
    if family == "qwen":
        return QwenShapes()
    if family == "nova":
        return NovaShapes()
    return OpenAIShapes()
