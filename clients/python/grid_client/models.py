"""What the API answers, as small dataclasses that keep the raw JSON beside the fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

__all__ = ["Job", "Token", "FINAL_STATES"]

#: The states a job does not leave.
FINAL_STATES = frozenset({"done", "failed", "cancelled"})


@dataclass(frozen=True)
class Job:
    """A job as ``GET /api/v1/jobs/{id}`` answers it.

    ``state`` is ``queued``, ``running``, ``done``, ``failed`` or ``cancelled``. The chunk
    counters are ``chunks`` of the API: ``chunks_total``, ``chunks_done`` (accepted),
    ``chunks_failed`` and ``chunks_revised`` (reopened after acceptance because a worker behind
    them was caught lying). Everything else the master said is in ``raw`` (``replicas``,
    ``redundancy``, ``created_at``, ...).
    """

    id: int
    state: str
    name: Optional[str]
    kernel: Optional[str]
    module: Optional[str]
    chunks_total: int
    chunks_done: int
    chunks_failed: int
    chunks_revised: int
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Job":
        chunks = data.get("chunks") or {}
        return cls(
            id=int(data["id"]),
            state=str(data["state"]),
            name=data.get("name"),
            kernel=data.get("kernel"),
            module=data.get("module"),
            chunks_total=int(chunks.get("total", 0)),
            chunks_done=int(chunks.get("done", 0)),
            chunks_failed=int(chunks.get("failed", 0)),
            chunks_revised=int(chunks.get("revised", 0)),
            raw=data,
        )

    @property
    def finished(self) -> bool:
        """Whether the job is ``done``, ``failed`` or ``cancelled``."""
        return self.state in FINAL_STATES

    @property
    def chunks_finished(self) -> int:
        """Chunks that are decided: accepted or failed."""
        return self.chunks_done + self.chunks_failed


@dataclass(frozen=True)
class Token:
    """A submitter token as ``POST /api/v1/tokens`` answers it: the secret is shown once."""

    id: int
    token: str = field(repr=False)
    label: Optional[str]
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Token":
        return cls(id=int(data["id"]), token=str(data["token"]), label=data.get("label"), raw=data)
