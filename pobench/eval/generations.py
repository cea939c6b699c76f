"""Reading a run's generations.jsonl back (written by pobench eval; its fields are listed in pobench/eval/__init__.py)."""
from __future__ import annotations

from pathlib import Path

from pobench.engine.io import read_jsonl
from pobench.errors import PobenchError


def unfinished_evaluation(run_dir: Path) -> str | None:
    """Why a run's generations.jsonl cannot be used (None when it can, or there is none): without eval.json beside it,
    its evaluation stopped between the two writes (eval.json names what the rows were judged by, and steps aside
    first, so the run is then unevaluated by design)."""
    run_dir = Path(run_dir)
    if (run_dir / "generations.jsonl").is_file() and not (run_dir / "eval.json").is_file():
        return (f"{run_dir}: generations.jsonl without eval.json (its evaluation did not finish); run pobench eval "
                f"{run_dir} again")
    return None


def read_generations(run_dir: Path) -> dict | None:
    """{prompt key: row} of a run's generations.jsonl (None when the run was not evaluated; an error where its
    evaluation did not finish). The key is the record id where every row has a distinct one, else the row's
    position."""
    path = Path(run_dir) / "generations.jsonl"
    if not path.is_file():
        return None
    problem = unfinished_evaluation(run_dir)
    if problem:
        raise PobenchError(problem)
    numbered = read_jsonl(path, "preference")
    for i, row in numbered:
        # what compare judges again and the report's digest reads: the prompt (text or chat messages), the answer
        prompt = row.get("prompt")
        if isinstance(prompt, str):   # text: one user turn, as every judge reads prompts as chat messages
            prompt = row["prompt"] = [{"role": "user", "content": prompt}]
        if not (isinstance(prompt, list) and prompt and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in prompt)):
            raise PobenchError(f"{path}:{i}: 'prompt' must be the prompt's text or its chat messages "
                               f"({{\"role\", \"content\"}} objects), got {prompt!r}")
        if not isinstance(row.get("output"), str):
            raise PobenchError(f"{path}:{i}: 'output' must be a string, got {row.get('output')!r}")
        pref = row["preference"]
        if pref is not None and (isinstance(pref, bool) or not isinstance(pref, (int, float)) or not 0 <= pref <= 1):
            raise PobenchError(f"{path}:{i}: 'preference' must be a number in [0, 1] or null, got {pref!r}")
    rows = [row for _, row in numbered]
    ids = [r.get("id") for r in rows]
    by_id = all(i is not None for i in ids) and len(set(map(str, ids))) == len(ids)
    return {(str(r["id"]) if by_id else r.get("index", n)): r for n, r in enumerate(rows)}
