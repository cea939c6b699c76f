"""Test plugin: a gold reward (completion length in words), so that `pobench run` subprocesses can generate
and score candidate pools without training a reward model. Loaded with `--plugin`."""
from pobench.rewards import register_gold


@register_gold("test-words")
def words(prompt_messages, completion):
    return float(len(completion.split()))
