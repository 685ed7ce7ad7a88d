"""Task modules through the client: the example modules uploaded from a path and run by real
workers, map over a module, and a chunk that fails."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from grid_client import ChunkFailed, Client, GridError, InvalidRequest


def fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, (a + b) % 2**64
    return a


def collatz_longest(start: int, end: int) -> dict:
    best_n, best_steps = start, -1
    for n in range(start, end):
        steps, m = 0, n
        while m != 1:
            m = m // 2 if m % 2 == 0 else 3 * m + 1
            steps += 1
        if steps > best_steps:
            best_n, best_steps = n, steps
    return {"n": best_n, "steps": best_steps}


def test_upload_a_module_from_a_path_and_run_it(grid: Client, fibonacci: Path) -> None:
    module_id = grid.upload_module(fibonacci)
    assert module_id == "sha256:" + hashlib.sha256(fibonacci.read_bytes()).hexdigest()
    # The same bytes again (as bytes, and as a str path): the same id.
    assert grid.upload_module(fibonacci.read_bytes()) == module_id
    assert grid.upload_module(str(fibonacci)) == module_id

    ns = [0, 1, 2, 10, 50, 90, 93, 1000]
    job = grid.submit(
        module=module_id, inputs=ns, redundancy=2, timeout_ms=5000, max_memory_mb=64
    )
    assert (job.module, job.kernel) == (module_id, None)
    assert job.raw["timeout_ms"] == 5000 and job.raw["max_memory_mb"] == 64
    finished = grid.wait(job, timeout=120)
    assert finished.state == "done", finished.raw
    lines = list(grid.results(job))
    assert [line["output"] for line in lines] == [fib(n) for n in ns]
    assert fib(90) == 2_880_067_194_370_816_120
    assert all(line["agreeing"] == 2 for line in lines)


def test_map_over_a_rust_module_with_a_frame_of_its_nested_outputs(
    grid: Client, collatz: Path
) -> None:
    bounds = [(1, 1000), (1000, 5000), (5000, 20_000), (27, 28)]
    inputs = [{"start": a, "end": b} for a, b in bounds]
    outputs = grid.map(collatz, inputs, timeout_ms=10_000)
    assert outputs.job is not None and outputs.job.module is not None
    assert list(outputs) == [{"longest": collatz_longest(a, b)} for a, b in bounds]
    assert collatz_longest(1, 1000) == {"n": 871, "steps": 178}

    frame = grid.results_frame(outputs.job, library="pandas")
    assert list(frame.columns) == ["index", "output.longest.n", "output.longest.steps", "agreeing"]
    assert frame["output.longest.n"].tolist() == [collatz_longest(a, b)["n"] for a, b in bounds]


def test_a_failed_chunk_raises_chunk_failed_in_its_turn(
    grid: Client, echo_or_trap_module: bytes
) -> None:
    module_id = grid.upload_module(echo_or_trap_module)
    outputs = grid.map(module_id, [7, {"x": [1, 2]}, 0, 3], max_memory_mb=16)
    assert next(outputs) == 7
    assert next(outputs) == {"x": [1, 2]}
    with pytest.raises(ChunkFailed) as failed:
        next(outputs)
    error = failed.value
    assert error.index == 2
    assert error.job_id == outputs.job.id
    assert error.code == "chunk_failed" and error.status is None
    assert error.error.startswith("trap: unreachable instruction executed"), error.error
    assert "chunk 2" in str(error)
    assert isinstance(error, GridError)

    job = grid.job(outputs.job)
    assert job.state == "failed"
    assert (job.chunks_done, job.chunks_failed) == (3, 1)
    lines = list(grid.results(job))
    assert lines[2] == {"index": 2, "error": error.error}
    assert lines[3]["output"] == 3

    frame = grid.results_frame(job, flatten=False)
    assert list(frame.columns) == ["index", "output", "agreeing", "error"]
    assert frame["error"].tolist()[2] == error.error


def test_a_module_given_as_bytes_to_map_is_uploaded_first(
    grid: Client, echo_or_trap_module: bytes
) -> None:
    values = [[i, str(i)] for i in range(1, 21)]
    assert list(grid.map(echo_or_trap_module, values, redundancy=1)) == values


def test_a_module_the_master_refuses(grid: Client) -> None:
    with pytest.raises(InvalidRequest) as refused:
        grid.upload_module(b"\x00asm\x01\x00\x00\x00")
    assert refused.value.status == 422
    assert refused.value.code == "invalid_module"
    assert refused.value.message

    with pytest.raises(InvalidRequest) as unknown:
        grid.submit(module="sha256:" + "0" * 64, inputs=[1])
    assert unknown.value.status == 422
    assert unknown.value.code == "unknown_module"

    with pytest.raises(InvalidRequest) as malformed:
        grid.submit(module="not-an-id", inputs=[1])
    assert malformed.value.code == "unknown_module"

    with pytest.raises(TypeError):
        grid.upload_module(12345)  # type: ignore[arg-type]
