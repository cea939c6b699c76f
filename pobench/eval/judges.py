"""Judges behind one interface: which of two outputs to the same prompt is better, as a probability.

    judge = build_judge("gold:<name>" | "rm:<folder or hub id>" | "alpaca_eval:<annotators config>" | ...)
    result = judge.compare(prompts, first_outputs, second_outputs)   # P(first wins) per prompt, in [0, 1]
    judge.name, judge.kind ("reward_model" | "llm" | "gold"), judge.describe()  -> into every result

Specs (`eval.judge`, `pobench eval --judge`):
  auto                      a Bradley-Terry reward model that pobench trains itself on training pairs disjoint
                            from the run's own (pobench/eval/runner.py builds it; its held-out accuracy is reported)
  rm:<folder | hub id>      any reward-model scorer from pobench.rewards (preference = sigmoid(score difference))
  gold:<name>               a registered gold reward (pobench.rewards.register_gold), same Bradley-Terry reading
  alpaca_eval:<config>      an alpaca_eval annotators config, e.g. alpaca_eval:weighted_alpaca_eval_gpt4_turbo
                            (needs an API key, or OPENAI_CLIENT_CONFIG_PATH for an OpenAI-compatible server)
  alpaca_eval:local         alpaca_eval's weighted GPT-4-turbo prompt answered by a local decoder (transformers or
                            vLLM, `eval.judge_decoder`; `eval.judge_model`, default SmolLM2-135M-Instruct: a weak
                            judge, for offline runs)

Output order is randomised per prompt (seeded on the prompt text, as alpaca_eval seeds its switch) by
`judge_against_reference`, for every judge, and recorded per prompt; a reward-model judge is symmetric, so the
order cannot change its verdict, but an LLM judge has a position bias that the randomisation averages out.
Registry entries are dotted paths imported on first use: no alpaca_eval import unless it is the judge.
"""
from __future__ import annotations

import importlib
import json
import math
import random
from dataclasses import dataclass, field

from pobench.errors import PobenchError


@dataclass
class Comparison:
    preferences: list[float | None]                # P(first output wins) per prompt; None: the judge gave no verdict
    scores_first: list[float] | None = None        # per-output scores where the judge scores outputs (RM, gold)
    scores_second: list[float] | None = None
    extra: list[dict] = field(default_factory=list)  # per-prompt judge details (e.g. an LLM judge's raw answer)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


class ScorerJudge:
    """A scorer (reward model or gold reward) as a judge: P(a beats b) = sigmoid(r(a) - r(b)), the
    Bradley-Terry model a reward model is trained under."""

    def __init__(self, scorer, kind: str, info: dict | None = None):
        self.scorer, self.kind, self.info = scorer, kind, dict(info or {})
        self.name = scorer.name

    def compare(self, prompts: list[list[dict]], first: list[str], second: list[str]) -> Comparison:
        # each distinct (prompt, output) is scored once: a reward model scores in length-sorted, padded batches, so
        # the same text in two batches got scores a few 1e-9 apart, and a tie (a policy answering as the reference
        # does) was counted as a win or a loss. Identical outputs now get one score, hence exactly 0.5, as
        # alpaca_eval gives identical outputs
        messages, outputs = list(prompts) * 2, list(first) + list(second)
        keys = [(json.dumps(p, sort_keys=True, default=str), t) for p, t in zip(messages, outputs)]
        once = {}   # (prompt, output) -> its place among the distinct ones, in order of first appearance
        for i, key in enumerate(keys):
            once.setdefault(key, (len(once), i))
        scored = self.scorer.score([messages[i] for _, i in once.values()], [outputs[i] for _, i in once.values()])
        scores = [scored[once[key][0]] for key in keys]
        a, b = scores[:len(first)], scores[len(first):]
        return Comparison([_sigmoid(x - y) for x, y in zip(a, b)], list(a), list(b))

    def score(self, prompts: list[list[dict]], outputs: list[str]) -> list[float]:
        return self.scorer.score(prompts, outputs)

    def describe(self) -> dict:
        scorer = self.scorer.describe()
        if isinstance(scorer.get("rm_info"), dict):   # the per-step loss curve is the RM's business, not the result's
            scorer["rm_info"] = {k: v for k, v in scorer["rm_info"].items() if k != "train_loss_curve"}
        return {"name": self.name, "kind": self.kind, "preference": "sigmoid(score difference)",
                "held_out_accuracy": self.info.get("held_out_accuracy"), "scorer": scorer,
                **{k: v for k, v in self.info.items() if k != "held_out_accuracy"}}


def rm_judge(spec: str, info: dict | None = None, **_options) -> ScorerJudge:
    """A reward-model folder or hub id; its held-out pair accuracy comes from its rm_info.json when pobench
    trained it (`pobench train-rm` or the auto judge), with the pairs it was measured on (`held_out_accuracy_on`:
    an `rm:` judge's may be another suite's; the eval runner measures it on the run's own held-out pairs where it
    can). An `rm:` judge's `identity` (rewards.reward_model_identity) tells judges of one name apart in the report,
    as a folder retrained in place keeps its name. The auto judge has none: its name is already keyed by the records
    and steps it trains on."""
    from pobench.rewards import get_scorer, reward_model_identity
    scorer = get_scorer(spec)
    described = scorer.describe()
    rm_info = described.get("rm_info") or {}
    accuracy = rm_info.get("eval_accuracy_after")
    on = None if accuracy is None else {"suite": rm_info.get("suite"), "source": rm_info.get("eval_source"),
                                        "pairs": rm_info.get("eval_pairs"), "measured_by": "rm_info.json"}
    auto = (info or {}).get("spec") == "auto"
    identity = {} if auto else {"identity": reward_model_identity(described.get("rm_info"), scorer.path or spec)}
    info = {"held_out_accuracy": accuracy, "held_out_accuracy_on": on, **identity, **(info or {})}
    return ScorerJudge(scorer, "reward_model", info)


def gold_judge(spec: str, **_options) -> ScorerJudge:
    from pobench.rewards import get_scorer
    return ScorerJudge(get_scorer(f"gold:{spec}"), "gold", {"held_out_accuracy": None})


# kind prefix -> "module:factory"; factories take the text after the prefix (and keyword options)
JUDGES: dict[str, str] = {
    "rm": "pobench.eval.judges:rm_judge",
    "gold": "pobench.eval.judges:gold_judge",
    "alpaca_eval": "pobench.eval.llm_judge:alpaca_eval_judge",
}


def register_judge(prefix: str, target: str) -> None:
    """Add a judge kind: `prefix:<argument>` specs are built by the "module:function" target."""
    JUDGES[prefix] = target


def check_judge_spec(spec: str) -> tuple[str, str] | None:
    """(kind, argument) of a judge spec (None for `auto`, which the eval runner resolves); a spec of no known form is
    an error naming it. Cheap: the CLI checks every run's judge with it before the first evaluation."""
    spec = str(spec).strip()
    if spec == "auto":
        return None
    prefix, sep, arg = spec.partition(":")
    if not sep or prefix not in JUDGES or not arg:
        raise PobenchError(f"eval.judge '{spec}': expected auto, " + ", ".join(f"{k}:<...>" for k in sorted(JUDGES)))
    return prefix, arg


def build_judge(spec: str, **options):
    """A judge from its spec (see the module docstring); `auto` is resolved by the eval runner first. Options
    (cache_dir, judge_model, device, ...) go to every factory, which takes what it needs."""
    checked = check_judge_spec(spec)
    if checked is None:
        raise PobenchError("eval.judge 'auto': resolved by the eval runner, not built here")
    prefix, arg = checked
    module, _, attr = JUDGES[prefix].partition(":")
    factory = getattr(importlib.import_module(module), attr)
    return factory(arg, **options)


def prompt_text(messages: list[dict]) -> str:
    """The instruction as a judge reads it: a lone user turn as is, a dialogue as 'User:/Assistant:' turns."""
    if len(messages) == 1 and messages[0].get("role") == "user":
        return messages[0]["content"]
    role = {"user": "User", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(f"{role.get(m['role'], m['role'])}: {m['content']}" for m in messages)


def policy_goes_first(instruction: str, seed: int) -> bool:
    """A seeded coin per prompt (alpaca_eval seeds its output switch on the instruction the same way), so the
    order is random across prompts but the same every time a prompt is judged."""
    return random.Random(f"order{instruction}{seed}").random() < 0.5


def judge_against_reference(judge, prompts: list[list[dict]], policy: list[str], reference: list[str],
                            seed: int = 0, both_orders: bool = False) -> list[dict]:
    """Per prompt: {"preference": P(policy beats reference) or None, "policy_first", "scores", "judge_extra"}, the
    order a seeded coin per prompt. `both_orders`: a pairwise judge (one that gives no scores) also sees the other
    order; the preference is then the mean of the two (None where either is), each kept in "preference_orders"
    (coin order first)."""
    first_is_policy = [policy_goes_first(prompt_text(p), seed) for p in prompts]
    first = [a if f else b for a, b, f in zip(policy, reference, first_is_policy)]
    second = [b if f else a for a, b, f in zip(policy, reference, first_is_policy)]
    result = judge.compare(prompts, first, second)
    swapped = judge.compare(prompts, second, first) if both_orders and result.scores_first is None else None
    rows = []
    for i, f in enumerate(first_is_policy):
        p = result.preferences[i]
        row = {"preference": None if p is None else (p if f else 1.0 - p), "policy_first": f, "scores": None,
               "judge_extra": result.extra[i] if result.extra else None}
        if swapped is not None:
            q = swapped.preferences[i]
            orders = [row["preference"], None if q is None else (1.0 - q if f else q)]
            row["preference_orders"] = orders
            row["preference"] = None if None in orders else (orders[0] + orders[1]) / 2
            if swapped.extra:
                row["judge_extra"] = {"coin_order": row["judge_extra"], "other_order": swapped.extra[i]}
        if result.scores_first is not None:
            s1, s2 = result.scores_first[i], result.scores_second[i]
            row["scores"] = {"policy": s1 if f else s2, "reference": s2 if f else s1}
        rows.append(row)
    return rows
