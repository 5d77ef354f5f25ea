"""Model families: each encodes the request body and decodes the answer in its own
documented shape, behind one small interface (`Provider`). The model's prefix picks the
family (`gpt:gpt-4o`); a model without one, or of a family not listed here, is spoken to
in OpenAI's shapes, which every OpenAI-compatible server reads.
"""

from __future__ import annotations

from typing import Any, Protocol

from pipeline.config.settings import RequestConfig
from pipeline.http.answer import Redacts
from pipeline.records import Completion


class Provider(Protocol):
    family: str

    def payload(self, req: RequestConfig, image_url: str) -> dict[str, Any]:
        """The request body for one image (`image_url`: a URL or a data URL)."""

    def completion(self, body: Any, status: int, endpoint: Redacts) -> Completion:
        """The completion a successful answer's parsed JSON holds, or a typed ApiError."""


def provider_for(model: str) -> Provider:
    from pipeline.http.providers.openai import OpenAIShapes

    return OpenAIShapes()
