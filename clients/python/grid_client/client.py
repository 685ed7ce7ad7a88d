"""The client: one :class:`Client` per master and token, over one ``httpx.Client``."""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Iterable as IterableABC
from typing import Any, Dict, Iterable, Iterator, List, Optional, Union

import httpx

from . import __version__
from .errors import (
    ChunkFailed,
    ConnectionFailed,
    GridError,
    JobCancelled,
    QuotaExceeded,
    WaitTimeout,
    error_from_response,
)
from .models import Job, Token

__all__ = ["Client", "ResultStream", "MapIterator"]

JobRef = Union[int, Job]
ModuleSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]

_API = "/api/v1"


def _job_id(job: JobRef) -> int:
    if isinstance(job, Job):
        return job.id
    if isinstance(job, bool) or not isinstance(job, int):
        raise TypeError(f"a job is given by its id (an int) or a Job, not {type(job).__name__}")
    return job


def _dumps(value: Any) -> str:
    # NaN and infinities are not JSON: refuse them here rather than send what the master
    # cannot read.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _flatten(record: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested objects become dotted columns (``output.count``); lists and scalars stay."""
    flat: Dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


class Client:
    """A client of one grid master.

    ``url`` is the master (``http://127.0.0.1:8080``; default ``$GRID_URL``), ``token`` a
    submitter token or the admin token (default ``$GRID_TOKEN``). ``timeout`` bounds each
    request in seconds (connecting, and each read of a results stream). ``retries`` is how many
    times a request answered ``429`` with ``Retry-After`` is sent again after waiting that long
    (nothing was stored by a refused request, so this is safe for submissions too); ``0``, the
    default, raises :class:`~grid_client.QuotaExceeded` at once. ``verify`` goes to httpx: the
    path of a PEM file of certificates to trust (a private CA, or a self-signed master) besides
    the system's, or ``False``.

    Use it as a context manager, or call :meth:`close`, to close its connections.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        timeout: float = 30.0,
        retries: int = 0,
        verify: Union[bool, str] = True,
    ) -> None:
        url = url if url is not None else os.environ.get("GRID_URL", "http://127.0.0.1:8080")
        token = token if token is not None else os.environ.get("GRID_TOKEN")
        if not token:
            raise ValueError("a token is required: pass token=... or set GRID_TOKEN")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the master's url must start with http:// or https://, not {url!r}")
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        self.url = url.rstrip("/")
        self.retries = retries
        self._http = httpx.Client(
            base_url=self.url,
            headers={
                "Authorization": f"Bearer {token}",
                "User-Agent": f"grid-client-python/{__version__}",
            },
            timeout=timeout,
            verify=verify,
        )

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Close the connections to the master."""
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # -- plumbing ------------------------------------------------------------------------

    def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        """Send, honouring ``retries`` for 429 answers with ``Retry-After``; an error answer
        becomes its exception (the response is closed)."""
        attempt = 0
        while True:
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as error:
                raise ConnectionFailed(
                    None, "connection_failed", f"cannot reach {self.url}: {error}"
                ) from error
            if response.status_code < 400:
                return response
            try:
                content = response.read()
            except httpx.TransportError as error:
                response.close()
                raise ConnectionFailed(
                    None, "connection_failed", f"the answer of {self.url} broke off: {error}"
                ) from error
            response.close()
            error = error_from_response(response.status_code, response.headers, content)
            if (
                isinstance(error, QuotaExceeded)
                and error.retry_after is not None
                and attempt < self.retries
            ):
                attempt += 1
                time.sleep(error.retry_after)
                continue
            raise error

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(self._http.build_request(method, _API + path, **kwargs))
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    # -- jobs ----------------------------------------------------------------------------

    def submit(
        self,
        kernel: Optional[str] = None,
        *,
        module: Optional[str] = None,
        inputs: Iterable[Any],
        **fields: Any,
    ) -> Job:
        """Submit a job of a built-in ``kernel`` (``echo``, ``mandelbrot``, ``primes``,
        ``sha256``) or an uploaded ``module`` (its id, ``sha256:<hex>``, from
        :meth:`upload_module`): exactly one of the two. ``inputs`` is any iterable of JSON
        values, one per chunk.

        The other job fields go as they are: ``redundancy``, ``name``, ``priority``,
        ``max_replicas``, ``lease_seconds``, ``verification``, and for module jobs
        ``timeout_ms``, ``max_memory_mb`` and ``output``; ``None`` leaves a field out (the
        master's default). Returns the job as stored (``queued``).
        """
        if (kernel is None) == (module is None):
            raise ValueError("give exactly one of kernel= (a kernel name) or module= (a module id)")
        if isinstance(inputs, (str, bytes, bytearray, dict)) or not isinstance(inputs, IterableABC):
            raise TypeError("inputs must be an iterable of JSON values, one per chunk (e.g. a list)")
        head: Dict[str, Any] = {"kernel": kernel} if kernel is not None else {"module": module}
        for name, value in fields.items():
            if name == "inputs":
                raise TypeError("inputs is given once, as inputs=")
            if value is not None:
                head[name] = value
        # The fields, then the inputs encoded one by one, so that a value that is not JSON is
        # named by its position before anything is sent.
        parts: List[str] = [_dumps(head)[:-1], ',"inputs":[']
        for position, value in enumerate(inputs):
            if position:
                parts.append(",")
            try:
                parts.append(_dumps(value))
            except (TypeError, ValueError) as error:
                raise ValueError(f"inputs[{position}] is not JSON: {error}") from error
        parts.append("]}")
        body = "".join(parts).encode("utf-8")
        data = self._json(
            "POST", "/jobs", content=body, headers={"Content-Type": "application/json"}
        )
        return Job.from_dict(data)

    def job(self, job: JobRef) -> Job:
        """The job now."""
        return Job.from_dict(self._json("GET", f"/jobs/{_job_id(job)}"))

    def jobs(self) -> List[Job]:
        """The caller's jobs, newest first (at most 1000; the admin sees everyone's)."""
        return [Job.from_dict(item) for item in self._json("GET", "/jobs")["jobs"]]

    def cancel(self, job: JobRef) -> Job:
        """Cancel the job; its outstanding leases are revoked from their workers. A finished
        job raises :class:`~grid_client.Conflict`."""
        return Job.from_dict(self._json("DELETE", f"/jobs/{_job_id(job)}"))

    def wait(
        self,
        job: JobRef,
        progress: bool = False,
        poll: float = 0.5,
        timeout: Optional[float] = None,
    ) -> Job:
        """Poll the job every ``poll`` seconds until it is ``done``, ``failed`` or
        ``cancelled``, and return it. With ``progress=True``, a tqdm bar of finished chunks
        (needs ``tqdm``: ``pip install 'grid-client[progress]'``). Past ``timeout`` seconds
        raises :class:`~grid_client.WaitTimeout` (the job goes on)."""
        if poll <= 0:
            raise ValueError("poll must be a positive number of seconds")
        job_id = _job_id(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        current = self.job(job_id)
        if progress:
            bar = _progress_bar(current)
        try:
            while True:
                if bar is not None:
                    bar.total = current.chunks_total
                    bar.n = current.chunks_finished
                    bar.set_postfix_str(current.state, refresh=False)
                    bar.refresh()
                if current.finished:
                    return current
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(current, timeout if timeout is not None else 0.0)
                pause = poll
                if deadline is not None:
                    pause = max(0.0, min(poll, deadline - time.monotonic()))
                time.sleep(pause)
                current = self.job(job_id)
        finally:
            if bar is not None:
                bar.close()

    def results(self, job: JobRef) -> "ResultStream":
        """The job's results, streamed: an iterator of dicts, one per finished chunk in index
        order, ``{"index", "output", "agreeing"}`` or ``{"index", "error"}``. Only chunks
        finished so far are listed (wait first for all of them). The request is made at once
        (so an unknown job raises :class:`~grid_client.NotFound` here); the lines are read as
        they are consumed. Close the stream (or use it in a ``with``) to stop early."""
        request = self._http.build_request("GET", f"{_API}/jobs/{_job_id(job)}/results")
        return ResultStream(self._send(request, stream=True), self.url)

    def results_frame(self, job: JobRef, library: str = "pandas", flatten: bool = True) -> Any:
        """The job's results as a DataFrame of ``library`` (``"pandas"`` or ``"polars"``),
        one row per finished chunk: columns ``index``, ``agreeing``, the output and ``error``.
        With ``flatten`` (the default) an object output becomes one column per field,
        ``output.count``, ``output.longest.n``...; otherwise one ``output`` column. Raises
        ImportError when that library is not installed."""
        if library == "pandas":
            try:
                import pandas
            except ImportError as error:
                raise ImportError(
                    "results_frame(library='pandas') needs pandas: "
                    "pip install 'grid-client[pandas]'"
                ) from error
        elif library == "polars":
            try:
                import polars
            except ImportError as error:
                raise ImportError(
                    "results_frame(library='polars') needs polars: "
                    "pip install 'grid-client[polars]'"
                ) from error
        else:
            raise ValueError(f"library must be 'pandas' or 'polars', not {library!r}")
        with self.results(job) as lines:
            records = [_flatten(line) if flatten else line for line in lines]
        columns: Dict[str, None] = {"index": None}
        for record in records:
            for name in record:
                columns.setdefault(name, None)
        rows = [{name: record.get(name) for name in columns} for record in records]
        if library == "pandas":
            return pandas.DataFrame.from_records(rows, columns=list(columns))
        if not rows:
            return polars.DataFrame({"index": []}, schema={"index": polars.Int64})
        return polars.from_dicts(rows, infer_schema_length=None)

    def map(
        self,
        program: Union[str, "os.PathLike[str]", bytes],
        iterable: Iterable[Any],
        *,
        progress: bool = False,
        poll: float = 0.5,
        timeout: Optional[float] = None,
        **fields: Any,
    ) -> "MapIterator":
        """Run ``program`` on every item of ``iterable`` as one job, one chunk per item, and
        iterate over the outputs in the items' order.

        ``program`` is a kernel name, a module id (``sha256:...``), or a module to upload first
        (the bytes, or the path of a ``.wasm`` file). ``fields`` are job fields as for
        :meth:`submit`. The job is submitted at once (errors raise here); iterating waits for it
        to finish (``progress``, ``poll``, ``timeout`` as for :meth:`wait`), then yields each
        chunk's output; a failed chunk raises :class:`~grid_client.ChunkFailed` when its turn
        comes, a cancelled job :class:`~grid_client.JobCancelled`. An empty iterable submits
        nothing and yields nothing.
        """
        inputs = list(iterable)
        if not inputs:
            return MapIterator(self, None, 0, progress, poll, timeout)
        if isinstance(program, (bytes, bytearray, memoryview, os.PathLike)) or (
            isinstance(program, str) and program.endswith(".wasm")
        ):
            job = self.submit(module=self.upload_module(program), inputs=inputs, **fields)
        elif isinstance(program, str) and program.startswith("sha256:"):
            job = self.submit(module=program, inputs=inputs, **fields)
        elif isinstance(program, str):
            job = self.submit(kernel=program, inputs=inputs, **fields)
        else:
            raise TypeError(
                "program must be a kernel name, a module id, a module's bytes or a .wasm path"
            )
        return MapIterator(self, job, len(inputs), progress, poll, timeout)

    # -- modules -------------------------------------------------------------------------

    def upload_module(self, module: ModuleSource) -> str:
        """Upload a WebAssembly task module, given as bytes or as a file's path, and return its
        id (``sha256:<hex>``). Uploading the same bytes again answers the same id. A module the
        master refuses raises :class:`~grid_client.InvalidRequest` (``invalid_module`` with
        the reason, ``too_large``)."""
        if isinstance(module, (bytes, bytearray, memoryview)):
            content = bytes(module)
        elif isinstance(module, (str, os.PathLike)):
            with open(module, "rb") as file:
                content = file.read()
        else:
            raise TypeError("a module is given as bytes or as the path of a .wasm file")
        data = self._json(
            "POST", "/modules", content=content, headers={"Content-Type": "application/wasm"}
        )
        return str(data["id"])

    def delete_module(self, module_id: str) -> None:
        """Drop the caller's hold on a module it uploaded (freeing its quota);
        :class:`~grid_client.Conflict` (``module_in_use``) while an unfinished job runs it."""
        self._json("DELETE", f"/modules/{module_id}")

    # -- tokens (admin) ------------------------------------------------------------------

    def create_token(self, label: Optional[str] = None) -> Token:
        """Admin only: a new submitter token (its secret is in ``.token``, shown once)."""
        body = {} if label is None else {"label": label}
        return Token.from_dict(self._json("POST", "/tokens", json=body))

    def tokens(self) -> List[Dict[str, Any]]:
        """Admin only: every submitter token (never a secret), oldest first."""
        return list(self._json("GET", "/tokens")["tokens"])

    def revoke_token(self, token_id: int) -> None:
        """Admin only: revoke a submitter token; it is refused from then on."""
        self._json("DELETE", f"/tokens/{int(token_id)}")


def _progress_bar(job: Job) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        warnings.warn(
            "wait(progress=True) needs tqdm for its progress bar: "
            "pip install 'grid-client[progress]'",
            stacklevel=3,
        )
        return None
    return tqdm(total=job.chunks_total, unit="chunk", desc=f"job {job.id}")


class ResultStream:
    """The NDJSON lines of ``GET /jobs/{id}/results`` as dicts, read as they are consumed.
    Closes its connection when exhausted, on :meth:`close` or at the end of a ``with``."""

    def __init__(self, response: httpx.Response, url: str) -> None:
        self._response = response
        self._url = url
        self._lines = response.iter_lines()
        self._closed = False

    def __iter__(self) -> "ResultStream":
        return self

    def __next__(self) -> Dict[str, Any]:
        if self._closed:
            raise StopIteration
        while True:
            try:
                line = next(self._lines)
            except StopIteration:
                self.close()
                raise
            except httpx.TransportError as error:
                self.close()
                raise ConnectionFailed(
                    None,
                    "connection_failed",
                    f"the results stream from {self._url} broke off: {error}",
                ) from error
            if line.strip():
                return json.loads(line)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._response.close()

    def __enter__(self) -> "ResultStream":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class MapIterator:
    """The outputs of :meth:`Client.map`, in input order. ``job`` is the submitted job
    (``None`` for an empty iterable)."""

    def __init__(
        self,
        client: Client,
        job: Optional[Job],
        count: int,
        progress: bool,
        poll: float,
        timeout: Optional[float],
    ) -> None:
        self.job = job
        self._client = client
        self._count = count
        self._progress = progress
        self._poll = poll
        self._timeout = timeout
        self._outputs: Optional[Iterator[Any]] = None

    def __iter__(self) -> "MapIterator":
        return self

    def __next__(self) -> Any:
        if self._outputs is None:
            self._outputs = self._generate()
        return next(self._outputs)

    def __len__(self) -> int:
        return self._count

    def _generate(self) -> Iterator[Any]:
        if self.job is None:
            return
        finished = self._client.wait(
            self.job, progress=self._progress, poll=self._poll, timeout=self._timeout
        )
        self.job = finished
        expected = 0
        with self._client.results(finished) as lines:
            for line in lines:
                index = line.get("index")
                if index != expected:
                    break
                if "error" in line and "output" not in line:
                    raise ChunkFailed(finished.id, index, str(line["error"]))
                yield line.get("output")
                expected += 1
        if expected < self._count:
            if finished.state == "cancelled":
                raise JobCancelled(finished.id)
            raise GridError(
                None,
                "missing_result",
                f"job {finished.id} is {finished.state} but has no result for chunk {expected}",
            )
