"""The one record type every suite produces and every sampler consumes."""
from __future__ import annotations

import hashlib
import json
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


def records_digest(records) -> str:
    """A hash of the records' content (ids, prompts, completions, pools), for the keys of models trained on them:
    the same data read from another folder hits the cache, a file edited in place does not. Records without an id
    of their source's (HH-RLHF) are named "<file name>:<row>", so a renamed file is other data here."""
    digest = hashlib.sha1()
    for record in records:
        digest.update(json.dumps(record.to_json(), sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()

