"""Reference log-probs, computed once and cached on disk, shared by every algorithm and seed.

Keyed by the model's fingerprint (file name) and each pair's token-id hash (entries), so the data, the
chat template and the truncation are all part of the key.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from pobench.algorithm import SeqLogps
from pobench.data.tokenize import TokenizedPair


class ReferenceCache:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[str, tuple[float, float, int, int]] = {}
        if self.path.exists():
            try:
                data = torch.load(self.path, weights_only=True)
                self.entries = dict(zip(data["keys"], map(tuple, data["values"].tolist())))
            except Exception:
                self.entries = {}  # unreadable cache: recompute rather than trust it

    def missing(self, pairs: list[TokenizedPair]) -> list[TokenizedPair]:
        seen, out = set(), []
        for p in pairs:
            if p.key not in self.entries and p.key not in seen:
                seen.add(p.key)
                out.append(p)
        return out

    def add(self, pairs: list[TokenizedPair], logps: SeqLogps) -> None:
        values = torch.stack([logps.chosen.double(), logps.rejected.double(),
                              logps.chosen_tokens.double(), logps.rejected_tokens.double()], 1).tolist()
        for p, v in zip(pairs, values):
            self.entries[p.key] = (v[0], v[1], int(v[2]), int(v[3]))

    def lookup(self, pairs: list[TokenizedPair], device=None) -> SeqLogps:
        rows = torch.tensor([self.entries[p.key] for p in pairs], dtype=torch.float64)
        return SeqLogps(rows[:, 0].float(), rows[:, 1].float(), rows[:, 2].long(), rows[:, 3].long()).to(device or "cpu")

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        keys = list(self.entries)
        values = torch.tensor([self.entries[k] for k in keys], dtype=torch.float64).reshape(-1, 4)
        torch.save({"keys": keys, "values": values}, tmp)
        os.replace(tmp, self.path)
