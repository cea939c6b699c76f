"""The one record type every suite produces and every sampler consumes."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class PreferenceRecord:
    prompt: list[dict]                 # chat messages [{"role", "content"}], ends before the answer
    chosen: str                        # preferred completion (assistant text only)
    rejected: str                      # dispreferred completion
    candidates: list[str] = field(default_factory=list)   # a candidate pool, may be empty
    scores: list[float] | None = None  # one score per candidate, when the source has them
    id: str = ""                       # stable id: the source's own or "<file>:<row>"

    def to_json(self) -> dict:
        return asdict(self)
