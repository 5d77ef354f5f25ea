"""The errors this package raises on purpose, and the exit codes they map to.

    CaptionError
    ├── UsageError          bad config, flag, source or output folder          exit 2
    ├── StorageError        the output folder cannot be written (no space,     exit 5
    │                       read-only, permission): what was written is safe
    └── ApiError            what the endpoint (or the way to it) did
        ├── TransientError  408/409/429/5xx, timeouts, resets, unusable 200    retried
        │   └── RateLimited 429 that is a rate limit: throttles every worker   retried
        ├── RequestRejected this row is bad (400/404/413/415/422, bad image)   error row
        │   └── ResponseTooLarge  the answer passed max_response_mb            error row
        └── FatalApiError   401/402/403, insufficient_quota                     exit 3

Transport failures (timeouts, resets) and "the server said no" are kept apart: only the
former and the retryable statuses are ever retried. Classification is by status code and
error code, never by matching message text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.records import Usage

EXIT_OK = 0
EXIT_ROW_ERRORS = 1
EXIT_USAGE = 2
EXIT_FATAL_API = 3
EXIT_BUDGET = 4
EXIT_STORAGE = 5
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT


class CaptionError(Exception):
    """Base class for errors this package raises deliberately."""


class UsageError(CaptionError):
    """Bad input from the user; the message names the input and what is wrong."""


class StorageError(CaptionError):
    """A file of the output folder (or a manifest) could not be written: no space left,
    a read-only mount, no permission. Everything written before it is intact; rerunning
    once the cause is fixed finishes the job."""


def storage_error(path: object, exc: OSError) -> StorageError:
    """One line naming the path and the system's reason (`no space left on device`)."""
    reason = (exc.strerror or str(exc)).lower()
    return StorageError(f"{path}: cannot write: {reason}")


class ApiError(CaptionError):
    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        # The answer's headers, when there was an answer (rate-limit headers live there).
        self.headers: Mapping[str, str] = {}
        # Set when the failure would be the same for every row (a wrong URL path, a
        # model the server does not serve, a dead host): the circuit breaker's evidence.
        self.job_level: str | None = None
        # The usage an answer reported although it was unusable (a 200 without choices, a
        # stream cut off after its usage): it was billed, so the row's cost counts it.
        self.usage: Usage | None = None
        # False when no connection was made: the request body never left.
        self.sent = True


class TransientError(ApiError):
    """Worth another attempt, after `retry_after` seconds when the server said so."""

    def __init__(
        self, message: str, *, http_status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, http_status=http_status)
        self.retry_after = retry_after


class RateLimited(TransientError):
    """A 429 that is a rate limit (not a billing problem)."""


class RequestRejected(ApiError):
    """This row can never succeed as sent; record it as an error row and move on."""


class ResponseTooLarge(RequestRejected):
    """The answer grew past `[limits] max_response_mb`; reading stopped there."""


class FatalApiError(ApiError):
    """No row can succeed until the operator acts (key, balance, quota): stop the run."""
