"""`--suite synthetic`: a token language with a hidden, prompt-dependent gold reward, so that a run can be judged
by the truth instead of by another model.

    task.py       the language, the gold reward r*(x, y) and the behaviour process (all from one task seed)
    reference.py  the reference policy: a tiny Llama SFT'd by pobench on the behaviour process, cached
    data.py       K reference samples per prompt scored by gold -> pairs (best vs worst, optional BT noise) + pools
    evaluate.py   gold evaluation: mean gold, win rate vs the reference, KL(policy || reference), length

The gold reward is registered as `gold:synthetic` (task seed 0) and `gold:synthetic-<seed>` (other task seeds,
registered when their data is loaded or by `register_task_gold`), so it serves as the suite's reward model for
OnMC-PO and online DPO and as a judge for evaluation.
"""
from __future__ import annotations

from pobench.rewards import GOLD_REWARDS, register_gold


def register_task_gold(task_seed: int = 0) -> str:
    """Register the gold reward of a task seed (idempotent) and return its name."""
    from pobench.synthetic.data import gold_name
    from pobench.synthetic.task import SyntheticTask

    name = gold_name(task_seed)
    if name in GOLD_REWARDS:
        return name
    task = SyntheticTask(task_seed)

    def reward(prompt_messages: list, completion: str) -> float:
        return task.gold_text(prompt_messages, completion)

    # a distinct qualified name per task, so that register_gold's duplicate check can tell tasks apart
    reward.__qualname__ = f"gold_task{task_seed}"
    reward.__doc__ = (f"Synthetic task {task_seed}: sum of tanh(<q(x), u_t>) over the answer's tokens / max(|y|, 8) "
                      f"- 0.5 x repeated tokens / |y| (pobench/synthetic/task.py)")
    register_gold(name)(reward)
    return name


register_task_gold(0)

__all__ = ["register_task_gold"]
