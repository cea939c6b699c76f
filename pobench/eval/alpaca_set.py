"""AlpacaEval's 805 instructions as an eval set, and `model_outputs.json` in alpaca_eval's format.

The set is read from a local file (`--eval-file`: a JSON list of {"instruction", "output", "generator", "dataset"},
as alpaca_eval's files are; JSON lines work too) or, when none is given, from the hub (tatsu-lab/alpaca_eval, file
alpaca_eval_gpt4_baseline.json: AlpacaEval 2's reference outputs, GPT-4-turbo's, generator "gpt4_turbo"; the
repository's alpaca_eval.json holds AlpacaEval 1's, text-davinci-003's) when it is reachable: an unreachable hub is
an error that says to pass a file, never a silent fallback. Each item keeps its position in the file, and its
reference output the name of the model that wrote it (`generator`): alpaca_eval's length-controlled GLM looks up
instruction difficulty by that position, and its difficulties were measured against GPT-4-turbo's outputs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pobench.errors import PobenchError

# AlpacaEval 2's reference outputs (alpaca_eval's ALPACAEVAL_REFERENCE_OUTPUTS_2, the dataset config
# alpaca_eval_gpt4_baseline): "alpaca_eval.json" is AlpacaEval 1's (text-davinci-003), which alpaca_eval 2's judge,
# leaderboard and length-controlled GLM do not compare with
HUB_REPO, HUB_FILE = "tatsu-lab/alpaca_eval", "alpaca_eval_gpt4_baseline.json"
ALPACA_EVAL_SIZE = 805
# the `generator` of GPT-4-turbo's outputs: AlpacaEval 2's file names it gpt4_turbo, alpaca_eval's leaderboard and its
# GLM weights gpt4_1106_preview (the same model)
GPT4_TURBO_GENERATORS = ("gpt4_turbo", "gpt4_1106_preview")


@dataclass
class EvalItem:
    prompt: list[dict]            # chat messages ending before the answer
    reference_output: str | None  # the dataset's reference answer (AlpacaEval 2's file: GPT-4-turbo's), if it has one
    id: str
    index: int | None = None      # position among AlpacaEval's instructions (for the LC GLM)
    dataset: str | None = None
    generator: str | None = None  # the model that wrote reference_output, as the eval file names it


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
        generator = row.get("generator")
        if generator is not None and not isinstance(generator, str):
            raise PobenchError(f"{source}: row {i + 1}: 'generator' must be a string (the model that wrote 'output')")
        items.append(EvalItem([{"role": "user", "content": row["instruction"]}], output, f"alpaca_eval:{i}", i,
                              row.get("dataset"), generator))
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


def reference_generator(items: list[EvalItem]) -> str | list[str] | None:
    """Who wrote the items' reference outputs, as their file names it: one name, the sorted names where the file
    mixes several, None where it names none."""
    names = sorted({it.generator for it in items if it.generator is not None})
    return (names[0] if len(names) == 1 else names) if names else None


def check_difficulty_reference(items: list[EvalItem], n_rows: int, source: str) -> None:
    """Refuse alpaca_eval's `length_controlled_v1` GLM (eval.lc_difficulty_file) where it would be fitted wrong.
    `items`: the instructions evaluated (the first eval.num_prompts), `n_rows`: the file's.

    Its instruction difficulties and gamed baselines were measured against GPT-4-turbo's outputs: fitted against
    other reference outputs (AlpacaEval 1's, text-davinci-003's) the difficulty terms misplace the policy. Refused
    rather than computed with an lc_note: the leaderboard shows lc_win_rate without its note, and the refusal
    comes before the training (`pobench run`) or the generation (`pobench eval`).

    The difficulty is looked up by position (df_gamed.csv's `index`, as alpaca_eval does): a subset of the set, or
    another set, would be given other instructions' difficulties, so the file must have AlpacaEval's 805 rows
    (eval.num_prompts takes a prefix, which keeps the positions). A copy of all 805 in another order cannot be told
    apart from AlpacaEval's own here: df_gamed.csv holds no instruction text, and pobench ships no copy of the set."""
    key = "config key 'eval.lc_difficulty_file'"
    if n_rows != ALPACA_EVAL_SIZE:
        raise PobenchError(f"{key}: alpaca_eval's GLM looks each instruction's difficulty up by its position among "
                           f"AlpacaEval's {ALPACA_EVAL_SIZE} instructions, and {source} has {n_rows} rows (a subset "
                           f"or another set would get other instructions' difficulties); evaluate AlpacaEval's own "
                           f"file (eval.num_prompts takes its first rows) or drop eval.lc_difficulty_file")
    for it in items:
        if it.generator not in GPT4_TURBO_GENERATORS:
            who = f"generator {it.generator!r}" if it.generator is not None else "no 'generator'"
            raise PobenchError(f"{key}: alpaca_eval's GLM holds instruction difficulties measured against "
                               f"GPT-4-turbo's outputs (generator gpt4_turbo), and {source} row {it.index + 1}'s "
                               f"reference output has {who}; use AlpacaEval 2's {HUB_FILE} or drop "
                               f"eval.lc_difficulty_file (the length-only GLM is used then)")
