"""Tokenizing the shipped samples with SmolLM2's tokenizer: records/s of the suite's path, `tokenize_records` (each
completion's ids taken from the joint text prompt + completion, 512 records per tokenizer call), of `tokenize_record`
called once per record, and of the path before c129c4e (each completion's text tokenized alone, one record at a time),
in one process, each round running the three in another order.

Workloads (pobench/data/samples):
  hh       HH-RLHF harmless-base, 1,992 records: prompt, chosen, rejected
  uf       UltraFeedback binarized train_prefs + test_prefs, 1,093 records: prompt, chosen, rejected
  uf-pool  the same records with a pool of 8 candidates each, tokenized as the suite tokenizes a record's pool
           (`with_candidates`). The binarized samples hold no pool, so each is made of the record's and the next 3
           records' answers, cut to 240 characters (a generated pool sample's mean length is 237)

Per workload: the median records/s of each path, and the ratios of each round's times to the path before (`joint`:
tokenize_records, `1 by 1`: tokenize_record), whose medians are the figures to read: the machine is shared and the
rates move from run to run. `differ` counts the records whose ids differ from the path before's (SmolLM2's should
be 0: the joint path changes no id of this tokenizer).

    python benchmarks/tokenize_speed.py [--rounds 5] [--workloads hh,uf,uf-pool] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from transformers import AutoTokenizer

from pobench.data.loading import SAMPLES_DIR, parse_rows, read_json_rows
from pobench.data.records import PreferenceRecord
from pobench.data.tokenize import ChatFormatter, TokenizedPair, tokenize_record, tokenize_records
from pobench.models import resolve_model_path

MAX_PROMPT, MAX_COMPLETION = 128, 64   # the suites' lengths
POOL_SIZE, POOL_CHARS = 8, 240


def read_sample(name: str) -> list[PreferenceRecord]:
    path = SAMPLES_DIR / name
    return parse_rows(str(path), read_json_rows(path), schema="auto").records


def with_pools(records: list[PreferenceRecord]) -> list[PreferenceRecord]:
    answers = [a for r in records for a in (r.chosen, r.rejected)]
    out = []
    for i, r in enumerate(records):
        pool = [answers[(2 * i + k) % len(answers)][:POOL_CHARS] for k in range(POOL_SIZE)]
        out.append(PreferenceRecord(prompt=r.prompt, chosen=r.chosen, rejected=r.rejected, candidates=pool,
                                    scores=[float(k) for k in range(POOL_SIZE)], id=r.id))
    return out


def workloads() -> dict[str, tuple[list[PreferenceRecord], bool]]:
    uf = read_sample("ultrafeedback/train_prefs-1000.jsonl.gz") + read_sample("ultrafeedback/test_prefs-100.jsonl.gz")
    return {"hh": (read_sample("hh-rlhf/harmless-base-test-2000.jsonl.gz"), False),
            "uf": (uf, False),
            "uf-pool": (with_pools(uf), True)}


def tokenize_alone(record: PreferenceRecord, formatter: ChatFormatter, max_prompt: int, max_completion: int,
                   with_candidates: bool = False) -> TokenizedPair:
    """The path before c129c4e: the prompt's ids, then each completion's text tokenized alone."""
    prompt_text = formatter.prompt_text(record.prompt)

    def completion(text: str) -> list[int]:
        return formatter.encode(formatter.completion_text(record.prompt, prompt_text, text))

    candidates = [completion(c)[:max_completion] for c in record.candidates] if with_candidates else []
    prompt_ids = formatter.encode(prompt_text)
    full = [completion(t) for t in (record.chosen, record.rejected)]
    return TokenizedPair(prompt_ids[-max_prompt:], full[0][:max_completion], full[1][:max_completion], candidates,
                         record.scores if with_candidates else None, source=record,
                         truncated=(len(prompt_ids) > max_prompt, any(len(c) > max_completion for c in full)))


def one_by_one(tokenize):
    return lambda records, *args: [tokenize(r, *args) for r in records]


PATHS = {"joint": tokenize_records, "1 by 1": one_by_one(tokenize_record), "alone": one_by_one(tokenize_alone)}


def timed(path: str, records, formatter, with_candidates) -> tuple[float, list[TokenizedPair]]:
    start = time.perf_counter()
    pairs = PATHS[path](records, formatter, MAX_PROMPT, MAX_COMPLETION, with_candidates)
    return time.perf_counter() - start, pairs


def ids(pair: TokenizedPair) -> tuple:
    return pair.prompt, pair.chosen, pair.rejected, pair.candidates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workloads", default="hh,uf,uf-pool")
    ap.add_argument("--json", default=None, help="also write the per-round times here")
    args = ap.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m-instruct"))
    formatter = ChatFormatter(tokenizer)
    chosen = workloads()
    print(f"SmolLM2-135M-Instruct tokenizer, {os.cpu_count()} CPUs, load average at start "
          f"{os.getloadavg()[0]:.2f}, {args.rounds} rounds")
    print(f"{'workload':9} {'records':>7} {'joint rec/s':>11} {'1 by 1 rec/s':>12} {'alone rec/s':>11} "
          f"{'joint/alone':>11} {'(min-max)':>11} {'1 by 1/alone':>12} {'differ':>6}")
    results = {}
    for name in args.workloads.split(","):
        records, with_candidates = chosen[name]
        timed("joint", records[:50], formatter, with_candidates)   # warm-up: templates compiled, caches
        times = {path: [] for path in PATHS}
        out = {}
        for k in range(args.rounds):
            order = list(PATHS)[k % len(PATHS):] + list(PATHS)[:k % len(PATHS)]
            for path in (order if k % 2 == 0 else reversed(order)):
                seconds, out[path] = timed(path, records, formatter, with_candidates)
                times[path].append(seconds)
        ratios = {path: [t / a for t, a in zip(times[path], times["alone"])] for path in ("joint", "1 by 1")}
        differ = sum(ids(j) != ids(a) or ids(o) != ids(a)
                     for j, o, a in zip(out["joint"], out["1 by 1"], out["alone"]))
        rate = {path: len(records) / statistics.median(t) for path, t in times.items()}
        joint = ratios["joint"]
        print(f"{name:9} {len(records):7d} {rate['joint']:11.0f} {rate['1 by 1']:12.0f} {rate['alone']:11.0f} "
              f"{statistics.median(joint):11.2f} {min(joint):5.2f}-{max(joint):<5.2f} "
              f"{statistics.median(ratios['1 by 1']):12.2f} {differ:6d}")
        results[name] = {"records": len(records), "seconds": times, "ratios": ratios, "records_per_s": rate,
                         "differ": differ}
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
