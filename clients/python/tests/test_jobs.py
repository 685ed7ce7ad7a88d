"""Kernel jobs through the client: submit, wait, results (streamed and as frames), map,
cancel, against a real master whose chunks are computed by real workers."""

from __future__ import annotations

from pathlib import Path
from typing import List

import pytest

import grid_client
from grid_client import Client, GridError, Job, JobCancelled, WaitTimeout


def primes_below(limit: int) -> List[bool]:
    sieve = [True] * limit
    sieve[0:2] = [False, False]
    for n in range(2, int(limit**0.5) + 1):
        if sieve[n]:
            sieve[n * n :: n] = [False] * len(range(n * n, limit, n))
    return sieve


SIEVE = primes_below(1_000_000)


def prime_count(start: int, end: int) -> int:
    return sum(SIEVE[start:end])


def ranges(end: int, chunks: int) -> List[dict]:
    step = end // chunks
    return [{"start": i * step, "end": (i + 1) * step} for i in range(chunks)]


def test_the_client_under_test_is_this_checkouts() -> None:
    here = Path(__file__).resolve().parents[1]
    assert Path(grid_client.__file__).resolve().parent == here / "grid_client"


def test_a_primes_job_is_verified_by_two_workers(grid: Client, capsys) -> None:
    inputs = ranges(1_000_000, 10)
    job = grid.submit(kernel="primes", inputs=inputs, redundancy=2, name="pi(10^6)")
    assert isinstance(job, Job)
    assert job.state == "queued"
    assert (job.kernel, job.module, job.name) == ("primes", None, "pi(10^6)")
    assert job.chunks_total == 10
    assert job.raw["redundancy"] == 2

    finished = grid.wait(job, progress=True, poll=0.2, timeout=120)
    assert finished.id == job.id
    assert finished.state == "done", finished.raw
    assert finished.finished
    assert (finished.chunks_done, finished.chunks_failed, finished.chunks_total) == (10, 0, 10)
    assert finished.raw["replicas"]["invalid"] == 0
    # The tqdm bar went to stderr and ended at 10 of 10.
    bar = capsys.readouterr().err
    assert f"job {job.id}" in bar and "10/10" in bar, bar

    lines = list(grid.results(job.id))
    assert [line["index"] for line in lines] == list(range(10))
    assert all(line["agreeing"] == 2 for line in lines), lines
    for line, chunk in zip(lines, inputs):
        assert line["output"] == {"count": prime_count(chunk["start"], chunk["end"])}
    assert sum(line["output"]["count"] for line in lines) == 78_498

    assert grid.job(job.id) == finished
    assert job.id in [listed.id for listed in grid.jobs()]


def test_echo_gives_every_json_value_back(grid: Client) -> None:
    inputs = [
        {"name": "ünïcödé ✓", "nested": {"list": [1, 2.5, None, True], "empty": {}}},
        [1, "two", [3]],
        "text",
        -12345678901234,
        0.125,
        None,
        False,
    ]
    job = grid.submit("echo", inputs=inputs, redundancy=1, priority=5, lease_seconds=60)
    assert job.raw["priority"] == 5 and job.raw["lease_seconds"] == 60
    assert grid.wait(job, timeout=120).state == "done"
    lines = list(grid.results(job))
    assert [line["output"] for line in lines] == inputs
    assert all(line["agreeing"] == 1 for line in lines)


def test_results_are_streamed_page_after_page(grid: Client) -> None:
    # More chunks than one page of the master's results stream (2,000).
    count = 2_050
    job = grid.submit("echo", inputs=({"i": i} for i in range(count)), redundancy=1)
    assert job.chunks_total == count
    assert grid.wait(job, poll=0.5, timeout=300).state == "done"
    seen = 0
    for expected, line in enumerate(grid.results(job)):
        assert line == {"index": expected, "output": {"i": expected}, "agreeing": 1}
        seen += 1
    assert seen == count
    # Stopping early closes the stream; the client goes on working.
    with grid.results(job) as stream:
        first = next(stream)
    assert first["index"] == 0
    assert list(stream) == []
    assert grid.job(job).state == "done"


def test_map_yields_outputs_in_input_order(grid: Client) -> None:
    # Chunks of very different sizes (the first ones the largest), so they finish out of order.
    bounds = [(0, 400_000), (400_000, 900_000), (10, 20), (5, 6), (900_000, 1_000_000)]
    bounds += [(n, n + 1000) for n in range(0, 30_000, 1000)]
    inputs = [{"start": a, "end": b} for a, b in bounds]
    outputs = grid.map("primes", inputs, redundancy=2)
    assert outputs.job is not None and outputs.job.chunks_total == len(inputs)
    assert len(outputs) == len(inputs)
    assert [output["count"] for output in outputs] == [prime_count(a, b) for a, b in bounds]

    words = [{"word": word, "at": i} for i, word in enumerate("the quick brown fox".split())]
    assert list(grid.map("echo", words, redundancy=1)) == words


def test_map_of_nothing_submits_nothing(grid: Client) -> None:
    before = len(grid.jobs())
    outputs = grid.map("echo", [])
    assert outputs.job is None
    assert list(outputs) == []
    assert len(grid.jobs()) == before


def big_job(grid: Client, name: str) -> Job:
    """A job far too long to finish during a test: 1,000 chunks of 10^8 numbers near 10^12."""
    start = 10**12
    step = 10**8
    inputs = [{"start": start + i * step, "end": start + (i + 1) * step} for i in range(1000)]
    return grid.submit(kernel="primes", inputs=inputs, name=name, priority=-1000)


def test_cancel_stops_a_job_and_cannot_be_repeated(grid: Client) -> None:
    job = big_job(grid, "to be cancelled")
    with pytest.raises(WaitTimeout) as waited:
        grid.wait(job, poll=0.1, timeout=0.3)
    assert waited.value.job.id == job.id
    assert waited.value.job.state in ("queued", "running")
    assert isinstance(waited.value, TimeoutError)

    cancelled = grid.cancel(job)
    assert cancelled.id == job.id
    assert cancelled.state == "cancelled"
    assert cancelled.chunks_done < cancelled.chunks_total
    assert grid.job(job.id).state == "cancelled"
    assert grid.wait(job.id, timeout=5).state == "cancelled"

    with pytest.raises(grid_client.Conflict) as again:
        grid.cancel(job.id)
    assert again.value.status == 409
    assert again.value.code == "conflict"
    assert "cannot be cancelled" in again.value.message
    assert isinstance(again.value, GridError)


def test_map_of_a_cancelled_job_raises_job_cancelled(grid: Client) -> None:
    start = 10**12
    inputs = [{"start": start + i * 10**8, "end": start + (i + 1) * 10**8} for i in range(500)]
    outputs = grid.map("primes", inputs, priority=-1000, poll=0.1, timeout=60)
    assert outputs.job is not None
    grid.cancel(outputs.job)
    with pytest.raises(JobCancelled) as cancelled:
        list(outputs)
    assert cancelled.value.job_id == outputs.job.id
    assert cancelled.value.code == "cancelled"


def test_results_frame_with_pandas(grid: Client) -> None:
    import pandas

    inputs = ranges(100_000, 4)
    job = grid.submit(kernel="primes", inputs=inputs)
    grid.wait(job, timeout=120)
    frame = grid.results_frame(job, library="pandas")
    assert isinstance(frame, pandas.DataFrame)
    assert list(frame.columns) == ["index", "output.count", "agreeing"]
    assert frame["index"].tolist() == [0, 1, 2, 3]
    assert frame["output.count"].tolist() == [
        prime_count(chunk["start"], chunk["end"]) for chunk in inputs
    ]
    assert int(frame["output.count"].sum()) == 9_592
    assert frame["agreeing"].tolist() == [2, 2, 2, 2]

    nested = grid.results_frame(job.id, flatten=False)
    assert list(nested.columns) == ["index", "output", "agreeing"]
    assert nested["output"].tolist()[0] == {"count": prime_count(0, 25_000)}

    with pytest.raises(ValueError, match="pandas' or 'polars'"):
        grid.results_frame(job, library="numpy")


def test_results_frame_with_polars(grid: Client) -> None:
    import polars

    inputs = ranges(100_000, 5)
    job = grid.submit(kernel="primes", inputs=inputs, redundancy=1)
    grid.wait(job, timeout=120)
    frame = grid.results_frame(job, library="polars")
    assert isinstance(frame, polars.DataFrame)
    assert frame.columns == ["index", "output.count", "agreeing"]
    assert frame["index"].to_list() == [0, 1, 2, 3, 4]
    assert frame["output.count"].to_list() == [
        prime_count(chunk["start"], chunk["end"]) for chunk in inputs
    ]
    assert frame["agreeing"].to_list() == [1] * 5


def test_a_results_frame_needs_its_library(grid: Client, monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def without_polars(name, *args, **kwargs):
        if name == "polars" or name.startswith("polars."):
            raise ImportError("No module named 'polars'")
        return real_import(name, *args, **kwargs)

    job = grid.submit(kernel="echo", inputs=[1], redundancy=1)
    monkeypatch.setattr(builtins, "__import__", without_polars)
    with pytest.raises(ImportError, match=r"pip install 'grid-client\[polars\]'"):
        grid.results_frame(job, library="polars")
