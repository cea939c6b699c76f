"""Reference log-probs, computed once and cached on disk, shared by every algorithm and seed.

The file is keyed by the model's fingerprint; its entries by each (prompt, completion) sequence's token-id
hash, so the data, the chat template and the truncation are all part of the key. Entries are per sequence,
so a candidate pool shared by MC-PO and RSO is scored once. Beside each entry the cache keeps what scoring it took
(wall seconds, its share of its batch's), so that every run that uses it is charged that, not only the run that
happened to score it, as a candidate pool's seconds are (pobench/sampling/pools.py).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from pobench.algorithm import SeqLogps
from pobench.data.tokenize import TokenizedPair, sequence_key
from pobench.engine.io import fsync_dir
from pobench.errors import PobenchError


class ReferenceCache:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[str, tuple[float, int]] = {}
        self.spent: dict[str, float] = {}   # key -> seconds; absent where not recorded (a 2-column file, from before)
        if self.path.exists():
            try:
                data = torch.load(self.path, weights_only=True)
                rows = dict(zip(data["keys"], data["values"].tolist()))
                self.entries = {k: (float(v[0]), int(v[1])) for k, v in rows.items()}
                self.spent = {k: v[2] for k, v in rows.items() if len(v) > 2 and math.isfinite(v[2])}
            except Exception:
                self.entries, self.spent = {}, {}  # unreadable cache: recompute rather than trust it

    def missing(self, seqs: list[tuple]) -> list[tuple]:
        seen, out = set(), []
        for prompt, completion in seqs:
            key = sequence_key(prompt, completion)
            if key not in self.entries and key not in seen:
                seen.add(key)
                out.append((prompt, completion))
        return out

    def add(self, seqs: list[tuple], logps: torch.Tensor, counts: torch.Tensor, seconds: list | None = None) -> None:
        for (prompt, completion), lp, n, s in zip(seqs, logps.tolist(), counts.tolist(), seconds or [None] * len(seqs)):
            key = sequence_key(prompt, completion)
            self.entries[key] = (lp, int(n))
            if s is None:
                self.spent.pop(key, None)
            else:
                self.spent[key] = s

    def lookup_sequences(self, seqs: list[tuple], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            rows = [self.entries[sequence_key(p, c)] for p, c in seqs]
        except KeyError:
            raise PobenchError("a sequence without a reference log-prob: the reference of the dataset's pairs and of "
                               "what a sampler's `reference_sequences` lists is computed before step 1; a sampler that "
                               "makes other sequences during training must call `ctx.ensure_reference(seqs)` on them "
                               "first") from None
        logps = torch.tensor([r[0] for r in rows], dtype=torch.float32, device=device)
        counts = torch.tensor([r[1] for r in rows], dtype=torch.long, device=device)
        return logps, counts

    def lookup(self, pairs: list[TokenizedPair], device=None) -> SeqLogps:
        chosen, chosen_n = self.lookup_sequences([(p.prompt, p.chosen) for p in pairs], device)
        rejected, rejected_n = self.lookup_sequences([(p.prompt, p.rejected) for p in pairs], device)
        return SeqLogps(chosen, rejected, chosen_n, rejected_n)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        keys = list(self.entries)
        values = torch.tensor([[*self.entries[k], self.spent.get(k, math.nan)] for k in keys],
                              dtype=torch.float64).reshape(-1, 3)
        with open(tmp, "wb") as f:   # synced before the rename, as every file of a run (engine/io.py)
            torch.save({"keys": keys, "values": values}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
