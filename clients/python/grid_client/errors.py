"""The exceptions of the client.

Every error the master answers is ``{"error": {"code": "...", "message": "..."}}`` with an HTTP
status; :func:`error_from_response` turns it into the :class:`GridError` subclass of that
status, carrying the API's ``code`` and ``message`` as they are.
"""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any, Mapping, Optional

__all__ = [
    "GridError",
    "ConnectionFailed",
    "InvalidRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "Gone",
    "QuotaExceeded",
    "Unavailable",
    "ServerError",
    "ChunkFailed",
    "JobCancelled",
    "WaitTimeout",
]


class GridError(Exception):
    """An error of the grid: the master refused a request, or a job did not give what was asked.

    ``status`` is the HTTP status (``None`` when no answer came, or for errors of a job rather
    than of a request), ``code`` the API's stable error code (``not_found``, ``unknown_kernel``,
    ``quota_exceeded``, ...), ``message`` its text for a human. ``body`` is the decoded error
    body when there was one.
    """

    def __init__(
        self,
        status: Optional[int],
        code: str,
        message: str,
        *,
        body: Any = None,
    ) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message
        self.body = body

    def __str__(self) -> str:
        if self.status is None:
            return f"{self.message} ({self.code})"
        return f"{self.message} ({self.code}, HTTP {self.status})"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r})"
        )


class ConnectionFailed(GridError):
    """The master could not be reached, or the connection broke (no HTTP status)."""


class InvalidRequest(GridError):
    """400, 405, 413, 415, 422: the request is malformed, too large or invalid.

    ``code`` says which: ``malformed_json``, ``malformed_body``, ``too_large``,
    ``unsupported_media_type``, ``unknown_kernel``, ``unknown_module``, ``invalid_module``,
    ``invalid_input``, ``invalid_field``, ``invalid_dataset``, and ``quota_exceeded`` for a 413:
    a job or module larger than the token's whole quota, which waiting cannot cure.
    """


class Unauthorized(GridError):
    """401: the token is missing, unknown or revoked."""


class Forbidden(GridError):
    """403: the token is valid but may not do this (an admin route with a submitter token)."""


class NotFound(GridError):
    """404: no such job, module, token or route (someone else's job is not found either)."""


class Conflict(GridError):
    """409: e.g. cancelling a finished job (``conflict``), deleting a module in use
    (``module_in_use``)."""


class Gone(GridError):
    """410 ``results_expired``: the retention deleted the job's results."""


class QuotaExceeded(GridError):
    """429: over a quota or a rate (``quota_exceeded``, ``too_many_auth_failures``, ...).

    ``retry_after`` is the number of seconds the ``Retry-After`` header asks to wait, or ``None``
    when the answer had none. Nothing was stored: the request may be sent again after that long
    (``Client(retries=N)`` does it by itself).
    """

    def __init__(
        self,
        status: Optional[int],
        code: str,
        message: str,
        *,
        body: Any = None,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(status, code, message, body=body)
        self.retry_after = retry_after


class Unavailable(GridError):
    """503: the master's database cannot be reached (``unavailable``), the request took too
    long (``timeout``) or the master holds as many connections as it may; try again later."""


class ServerError(GridError):
    """500 and other 5xx: a fault of the master (its log has the detail)."""


class ChunkFailed(GridError):
    """A chunk of the job failed: ``redundancy`` workers agreed on this error, or no quorum was
    reached. Raised by :meth:`grid_client.Client.map`; ``index`` is the chunk (the input's
    position), ``error`` the chunk's error text, ``job_id`` the job."""

    def __init__(self, job_id: int, index: int, error: str) -> None:
        super().__init__(None, "chunk_failed", f"chunk {index} of job {job_id} failed: {error}")
        self.job_id = job_id
        self.index = index
        self.error = error


class JobCancelled(GridError):
    """The job was cancelled before all its chunks finished (raised by
    :meth:`grid_client.Client.map`)."""

    def __init__(self, job_id: int) -> None:
        super().__init__(None, "cancelled", f"job {job_id} was cancelled")
        self.job_id = job_id


class WaitTimeout(TimeoutError):
    """:meth:`grid_client.Client.wait` gave up: the job had not finished within ``timeout``
    seconds. ``job`` is what it was like when last seen (it goes on running)."""

    def __init__(self, job: Any, timeout: float) -> None:
        super().__init__(f"job {job.id} did not finish within {timeout} s (it is {job.state})")
        self.job = job
        self.timeout = timeout


_BY_STATUS = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: InvalidRequest,
    409: Conflict,
    410: Gone,
    413: InvalidRequest,
    415: InvalidRequest,
    422: InvalidRequest,
    429: QuotaExceeded,
    503: Unavailable,
}


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(int(value)))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_response(status: int, headers: Mapping[str, str], content: bytes) -> GridError:
    """The exception for an error answer: the API's ``{"error": {"code", "message"}}`` when the
    body is that, else a code ``http_<status>`` and the start of the body."""
    body: Any = None
    code = f"http_{status}"
    message = ""
    try:
        body = json.loads(content.decode("utf-8")) if content else None
    except (UnicodeDecodeError, ValueError):
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        code = error["code"]
        message = str(error.get("message", ""))
    else:
        message = content[:500].decode("utf-8", "replace").strip() or f"HTTP {status}"
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else GridError
    if cls is QuotaExceeded:
        return QuotaExceeded(
            status,
            code,
            message,
            body=body,
            retry_after=parse_retry_after(headers.get("retry-after")),
        )
    return cls(status, code, message, body=body)
