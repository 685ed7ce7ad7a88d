"""The master's refusals as typed exceptions carrying the API's code, the 429 quota with its
Retry-After (and the client's retries), and what the client refuses before sending."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from grid_client import (
    Client,
    ConnectionFailed,
    Forbidden,
    GridError,
    InvalidRequest,
    NotFound,
    QuotaExceeded,
    Token,
    Unauthorized,
)

UNKNOWN_JOB = 987_654_321


def test_an_unknown_job_is_not_found(grid: Client) -> None:
    for call in (grid.job, grid.cancel, grid.results, grid.wait):
        with pytest.raises(NotFound) as missing:
            call(UNKNOWN_JOB)
        assert missing.value.status == 404
        assert missing.value.code == "not_found"
        assert missing.value.message == "job not found"
        assert missing.value.body == {"error": {"code": "not_found", "message": "job not found"}}
        assert str(missing.value) == "job not found (not_found, HTTP 404)"
        assert isinstance(missing.value, GridError)


def test_someone_elses_job_is_not_found(grid: Client, admin: Client) -> None:
    theirs = admin.submit(kernel="echo", inputs=[{"owner": "admin"}], redundancy=1)
    with pytest.raises(NotFound):
        grid.job(theirs)
    # The admin sees every job, the submitter's included.
    mine = grid.submit(kernel="echo", inputs=[{"owner": "submitter"}], redundancy=1)
    assert admin.job(mine.id).id == mine.id


def test_a_bad_token_is_unauthorized(grid_url: str) -> None:
    with Client(grid_url, "grid_" + "0" * 64) as stranger:
        with pytest.raises(Unauthorized) as refused:
            stranger.jobs()
        assert refused.value.status == 401
        assert refused.value.code == "unauthorized"
        with pytest.raises(Unauthorized):
            stranger.submit(kernel="echo", inputs=[1])


def test_a_revoked_token_is_unauthorized_at_once(grid_url: str, admin: Client) -> None:
    token = admin.create_token(label="revoked by the test")
    assert token.token.startswith("grid_") and token.label == "revoked by the test"
    assert token.token not in repr(token)
    with Client(grid_url, token.token) as client:
        client.jobs()
        admin.revoke_token(token.id)
        with pytest.raises(Unauthorized):
            client.jobs()
    listed = {item["id"]: item for item in admin.tokens()}
    assert listed[token.id]["revoked_at"] is not None


def test_a_submitter_token_is_forbidden_on_admin_routes(grid: Client) -> None:
    with pytest.raises(Forbidden) as refused:
        grid.create_token(label="not mine to make")
    assert refused.value.status == 403
    assert refused.value.code == "forbidden"


def test_an_invalid_kernel_is_an_invalid_request(grid: Client) -> None:
    with pytest.raises(InvalidRequest) as refused:
        grid.submit(kernel="no-such-kernel", inputs=[1])
    assert refused.value.status == 422
    assert refused.value.code == "unknown_kernel"
    assert "echo, mandelbrot, primes, sha256" in refused.value.message


def test_invalid_inputs_and_fields_name_what_is_wrong(grid: Client) -> None:
    with pytest.raises(InvalidRequest) as bad_input:
        grid.submit(kernel="primes", inputs=[{"start": 0, "end": 10}, {"start": 5}])
    assert bad_input.value.status == 422
    assert bad_input.value.code == "invalid_input"
    assert "inputs[1]" in bad_input.value.message

    with pytest.raises(InvalidRequest) as out_of_range:
        grid.submit(kernel="echo", inputs=[1], redundancy=9)
    assert out_of_range.value.code == "invalid_field"
    assert "redundancy" in out_of_range.value.message

    with pytest.raises(InvalidRequest) as module_only:
        grid.submit(kernel="echo", inputs=[1], timeout_ms=1000)
    assert module_only.value.code == "invalid_field"

    with pytest.raises(InvalidRequest) as empty:
        grid.submit(kernel="echo", inputs=[])
    assert empty.value.code == "invalid_field"

    with pytest.raises(InvalidRequest) as unknown_field:
        grid.submit(kernel="echo", inputs=[1], colour="blue")
    assert unknown_field.value.status == 422
    assert "colour" in unknown_field.value.message

    with pytest.raises(InvalidRequest) as too_large:
        grid.submit(kernel="echo", inputs=["x" * 70_000])
    assert too_large.value.status == 413
    assert too_large.value.code == "too_large"


def test_the_client_refuses_what_it_cannot_send(grid: Client) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        grid.submit(kernel="echo", module="sha256:" + "0" * 64, inputs=[1])
    with pytest.raises(ValueError, match="exactly one"):
        grid.submit(inputs=[1])
    with pytest.raises(ValueError, match=r"inputs\[1\]"):
        grid.submit(kernel="echo", inputs=[1.0, float("nan")])
    with pytest.raises(TypeError):
        grid.submit(kernel="echo", inputs={"start": 0})
    with pytest.raises(TypeError):
        grid.job("12")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Client("127.0.0.1:8080", "token")
    with pytest.raises(ValueError, match="token"):
        Client("http://127.0.0.1:8080", "")


def test_an_unreachable_master_is_a_connection_failure() -> None:
    # Port 1 on loopback: nothing listens there, the connection is refused at once.
    with Client("http://127.0.0.1:1", "grid_unused", timeout=5) as client:
        with pytest.raises(ConnectionFailed) as failed:
            client.jobs()
    assert failed.value.status is None
    assert failed.value.code == "connection_failed"
    assert "127.0.0.1:1" in failed.value.message


def test_the_submission_quota_answers_429_with_retry_after(
    fresh_token: Token, fibonacci: Path, grid_url: str
) -> None:
    # The master's submissions per minute (job submissions and module uploads count): a burst
    # of that many, then one every 60/N s. The master of python_client.rs keeps the default.
    rate = int(os.environ.get("GRID_SUBMISSIONS_PER_MINUTE", "60"))
    module = fibonacci.read_bytes()
    refused = None
    with Client(grid_url, fresh_token.token) as hasty:
        for _ in range(rate + 10):
            try:
                hasty.upload_module(module)
            except QuotaExceeded as error:
                refused = error
                break
    assert refused is not None, f"{rate + 10} uploads in a row were all accepted"
    assert refused.status == 429
    assert refused.code == "quota_exceeded"
    assert refused.retry_after is not None and 1 <= refused.retry_after <= 60
    assert "submissions" in refused.message

    # The same token, now with retries: the client waits Retry-After and sends it again.
    with Client(grid_url, fresh_token.token, retries=3) as patient:
        started = time.monotonic()
        module_id = patient.upload_module(module)
        waited = time.monotonic() - started
    assert module_id.startswith("sha256:")
    assert waited >= 0.9, f"the upload passed after {waited:.2f} s: it was not refused first"
