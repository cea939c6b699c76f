"""AlpacaEval's 805 instructions as an eval set, and `model_outputs.json` in alpaca_eval's format.

The set is read from a local file (`--eval-file`, alpaca_eval's `alpaca_eval.json`: a JSON list of
{"instruction", "output", "generator", "dataset"}; JSON lines work too) or, when none is given, from the hub
(tatsu-lab/alpaca_eval, file alpaca_eval.json) when it is reachable: an unreachable hub is an error that says
to pass a file, never a silent fallback. Each item keeps its position in the file: alpaca_eval's
length-controlled GLM looks up instruction difficulty by that index.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pobench.errors import PobenchError

HUB_REPO, HUB_FILE = "tatsu-lab/alpaca_eval", "alpaca_eval.json"
ALPACA_EVAL_SIZE = 805


@dataclass
class EvalItem:
    prompt: list[dict]            # chat messages ending before the answer
    reference_output: str | None  # the dataset's reference answer (AlpacaEval: GPT-4-turbo's), when it has one
    id: str
    index: int | None = None      # position among AlpacaEval's instructions (for the LC GLM)
    dataset: str | None = None


def _read_items(path: Path) -> list:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PobenchError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); alpaca_eval's files are "
                           f"UTF-8 JSON") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = []
        for row, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise PobenchError(f"{path}:{row}: bad JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise PobenchError(f"{path}: expected a JSON list of {{instruction, output, ...}} objects")
    return data


def parse_items(data: list, source: str) -> list[EvalItem]:
    items = []
    for i, row in enumerate(data):
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str):
            raise PobenchError(f"{source}: row {i + 1}: expected an object with a string 'instruction'")
        output = row.get("output")
        if output is not None and not isinstance(output, str):
            raise PobenchError(f"{source}: row {i + 1}: 'output' must be a string")
        items.append(EvalItem([{"role": "user", "content": row["instruction"]}], output, f"alpaca_eval:{i}", i,
                              row.get("dataset")))
    return items


def load_alpaca_eval(eval_file: str | None) -> tuple[list[EvalItem], str]:
    """(items, source description)."""
    if eval_file:
        path = Path(eval_file).expanduser()
        if not path.is_file():
            raise PobenchError(f"--eval-file {eval_file}: no such file")
        return parse_items(_read_items(path), str(path)), str(path)
    try:
        from huggingface_hub import hf_hub_download
        local = hf_hub_download(HUB_REPO, HUB_FILE, repo_type="dataset")
    except Exception as e:
        raise PobenchError(f"eval set alpaca_eval: the hub is not reachable ({type(e).__name__}); pass "
                           f"--eval-file with a local copy of {HUB_REPO}/{HUB_FILE}") from None
    return parse_items(_read_items(Path(local)), f"hub:{HUB_REPO}/{HUB_FILE}"), f"hub:{HUB_REPO}/{HUB_FILE}"


def model_outputs(items: list[EvalItem], outputs: list[str], generator: str) -> list[dict]:
    """alpaca_eval's model_outputs.json rows: `alpaca_eval --model_outputs model_outputs.json` reads them."""
    return [{"instruction": item.prompt[-1]["content"], "output": out, "generator": generator,
             **({"dataset": item.dataset} if item.dataset else {})} for item, out in zip(items, outputs)]
