"""One result row per (case, backend): a dataclass, serialized to and from JSON in one place."""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import asdict, dataclass, field, fields


class Status(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"
    SKIPPED = "skipped"

    @property
    def bad(self) -> bool:
        return self in (Status.FAIL, Status.ERROR)


STATUSES = tuple(s.value for s in Status)


@dataclass
class ResultRow:
    case: str
    backend: str
    status: Status = Status.SKIPPED
    message: str = ""
    case_file: str = ""
    metrics: dict | None = None
    thresholds: dict | None = None
    repro: str = ""
    shape: str = ""
    tags: list = field(default_factory=list)
    duration_s: float = 0.0
    diagnosis: dict | None = None
    backend_notes: dict | None = None
    heatmap: str | None = None
    traceback: str | None = None
    failure: str | None = None         # accuracy | nondeterministic | precision | crash | setup | inputs
    repeats: dict | None = None        # determinism check: runs, how many differed, max |diff|
    verdicts: dict | None = None       # other compare rules' verdicts (rule name -> pass/fail + why)
    attempt: dict | None = None        # isolation: worker pid, restarts, exit cause
    budget: dict | None = None         # error budget: the twin's rel_l2, k, the limit, this row's ratio

    _ALWAYS = ("case", "case_file", "backend", "status", "message", "metrics", "thresholds", "repro", "shape",
               "tags", "duration_s", "diagnosis")

    def to_json(self) -> dict:
        """A JSON object: the always-present keys, then the optional ones that are set."""
        d = asdict(self)
        d["status"] = self.status.value
        return {k: v for k, v in d.items() if k in self._ALWAYS or v is not None}

    @classmethod
    def from_json(cls, d: dict) -> "ResultRow":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["status"] = Status(d["status"])
        return cls(**kw)


def summarize(rows: list[dict]) -> dict:
    """Status counts over JSON rows: in total and per backend."""
    by_backend: dict[str, Counter] = {}
    for r in rows:
        by_backend.setdefault(r["backend"], Counter())[r["status"]] += 1
    total = Counter(r["status"] for r in rows)
    return {"total": {s: total.get(s, 0) for s in STATUSES},
            "by_backend": {b: {s: c.get(s, 0) for s in STATUSES} for b, c in sorted(by_backend.items())}}
