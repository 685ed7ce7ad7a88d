"""grid_client: the Python client of the grid's REST API.

    from grid_client import Client

    with Client("http://127.0.0.1:8080", token) as grid:
        job = grid.submit(kernel="primes", inputs=[{"start": 0, "end": 1000}])
        grid.wait(job, progress=True)
        total = sum(line["output"]["count"] for line in grid.results(job))

Every refusal of the master raises a :class:`GridError` subclass carrying the API's error code.
"""

__version__ = "0.1.0"

from .client import Client, MapIterator, ResultStream  # noqa: E402
from .errors import (  # noqa: E402
    ChunkFailed,
    Conflict,
    ConnectionFailed,
    Forbidden,
    Gone,
    GridError,
    InvalidRequest,
    JobCancelled,
    NotFound,
    QuotaExceeded,
    ServerError,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from .models import FINAL_STATES, Job, Token  # noqa: E402

__all__ = [
    "__version__",
    "Client",
    "Job",
    "Token",
    "FINAL_STATES",
    "ResultStream",
    "MapIterator",
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
