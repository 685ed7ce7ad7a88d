"""Fixtures of the client's tests, which run against a real master and real workers.

They need, in the environment:

- ``GRID_URL``: the master (``http://127.0.0.1:8080``) with at least two workers connected;
- ``GRID_TOKEN``: its admin token (the tests create submitter tokens with it);
- ``GRID_MODULES``: the directory of the example task modules (``<target>/task-modules``,
  built by ``cargo xtask modules``).

``server/tests/integration/python_client.rs`` starts such a master and two native workers and runs these
tests (``cargo xtask test`` runs that). A missing variable fails the run: nothing is skipped.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from grid_client import Client, Token


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise pytest.UsageError(
            f"{name} is not set: these tests run against a real master (GRID_URL, GRID_TOKEN: "
            "its admin token, GRID_MODULES: <target>/task-modules); server/tests/integration/python_client.rs "
            "sets them up (cargo xtask test runs it)"
        )
    return value


def pytest_sessionstart(session: pytest.Session) -> None:
    # Fail the whole run at once, with one clear message, rather than every test.
    for name in ("GRID_URL", "GRID_TOKEN", "GRID_MODULES"):
        _env(name)


@pytest.fixture(scope="session")
def grid_url() -> str:
    return _env("GRID_URL")


@pytest.fixture(scope="session")
def admin_token() -> str:
    return _env("GRID_TOKEN")


@pytest.fixture(scope="session")
def modules_dir() -> Path:
    path = Path(_env("GRID_MODULES"))
    if not path.is_dir():
        raise pytest.UsageError(f"GRID_MODULES={path} is not a directory")
    return path


@pytest.fixture(scope="session")
def admin(grid_url: str, admin_token: str) -> Iterator[Client]:
    """A client with the admin token."""
    with Client(grid_url, admin_token, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def submitter(admin: Client) -> Token:
    """A submitter token created through the API, shared by the tests."""
    return admin.create_token(label="grid-client tests")


@pytest.fixture(scope="session")
def grid(grid_url: str, submitter: Token) -> Iterator[Client]:
    """A client with the shared submitter token."""
    with Client(grid_url, submitter.token, timeout=30) as client:
        yield client


@pytest.fixture
def fresh_token(admin: Client) -> Iterator[Token]:
    """A submitter token of the test's own (its own quotas), revoked afterwards."""
    token = admin.create_token(label=f"grid-client test {uuid.uuid4().hex[:8]}")
    yield token
    admin.revoke_token(token.id)


def module_path(modules_dir: Path, name: str) -> Path:
    path = modules_dir / f"{name}.wasm"
    if not path.is_file():
        raise pytest.UsageError(
            f"{path} is missing: build the example modules with `cargo xtask modules`"
        )
    return path


@pytest.fixture(scope="session")
def fibonacci(modules_dir: Path) -> Path:
    """examples/wat/fibonacci.wat assembled: a JSON integer n in, fib(n) mod 2^64 out."""
    return module_path(modules_dir, "fibonacci")


@pytest.fixture(scope="session")
def collatz(modules_dir: Path) -> Path:
    """examples/collatz: {"start", "end"} in, {"longest": {"n", "steps"}} out."""
    return module_path(modules_dir, "collatz")


def _leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _section(section_id: int, content: bytes) -> bytes:
    return bytes([section_id]) + _leb128(len(content)) + content


def _name(text: str) -> bytes:
    raw = text.encode()
    return _leb128(len(raw)) + raw


@pytest.fixture(scope="session")
def echo_or_trap_module() -> bytes:
    """A raw-ABI task module, assembled here byte by byte: it returns its input unchanged,
    except that an input whose canonical JSON starts with ``0`` (the number 0) traps
    (``unreachable``). So ``[1, 0, 2]`` gives the outputs 1 and 2 and a failed chunk 1."""
    types = bytes(
        [0x02, 0x60, 0x01, 0x7F, 0x01, 0x7F, 0x60, 0x02, 0x7F, 0x7F, 0x01, 0x7E]
    )  # (i32) -> i32, (i32, i32) -> i64
    functions = bytes([0x02, 0x00, 0x01])
    memory = bytes([0x01, 0x00, 0x01])  # one memory, 1 page, no maximum
    exports = (
        bytes([0x03])
        + _name("memory") + bytes([0x02, 0x00])
        + _name("grid_alloc") + bytes([0x00, 0x00])
        + _name("grid_run") + bytes([0x00, 0x01])
    )
    grid_alloc = bytes([0x00, 0x41, 0x80, 0x08, 0x0B])  # i32.const 1024
    grid_run = bytes(
        [
            0x00,  # no locals
            0x20, 0x00, 0x2D, 0x00, 0x00,  # i32.load8_u (local.get $ptr)
            0x41, 0x30, 0x46,  # i32.const '0', i32.eq
            0x04, 0x40, 0x00, 0x0B,  # if: unreachable, end
            0x20, 0x00, 0xAD, 0x42, 0x20, 0x86,  # i64 ptr << 32
            0x20, 0x01, 0xAD, 0x84,  # | i64 len
            0x0B,
        ]
    )
    code = (
        bytes([0x02])
        + _leb128(len(grid_alloc)) + grid_alloc
        + _leb128(len(grid_run)) + grid_run
    )
    return (
        b"\x00asm\x01\x00\x00\x00"
        + _section(1, types)
        + _section(3, functions)
        + _section(5, memory)
        + _section(7, exports)
        + _section(10, code)
    )
