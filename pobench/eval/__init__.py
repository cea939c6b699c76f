"""Evaluation: generate on held-out prompts, judge against a reference, and the per-run metrics.

Modules: runner.py (the whole evaluation of one run folder), judges.py (reward-model, gold and the registry),
llm_judge.py (alpaca_eval annotators, local judge decoder), metrics.py (win rate, CIs, LC win rate, KL),
alpaca_set.py (AlpacaEval's 805 instructions, model_outputs.json), generations.py (generations.jsonl read back),
head_to_head.py (`pobench compare`: two runs' answers judged against each other, head_to_head.json).

Contract: `<run_dir>/eval.json`, written by `pobench eval RUN_DIR` and at the end of `pobench run`, strict JSON (a
number not measured is null, never NaN):

    eval_set          "held_out" | "alpaca_eval";  eval_source: where the prompts came from
    n_prompts         prompts generated (= n_judged + n_unjudged)
    decoding          {backend, temperature, top_p, top_k, max_new_tokens, seed, batch_size, chat_template,
                      max_prompt_length, decoder, batch_size_used}: batch_size as set (0 = auto); decoder the
                      path the policy's answers are decoded by ("static": the static-cache decoder on CUDA, "plain":
                      generate); batch_size_used the rows per forward this evaluation's generation used ([]: every
                      answer came from the answer store)
    eval_config       the eval.* section this evaluation resolved (pobench eval's --set/--judge/... included;
                      config.yaml keeps the run's own): what pobench compare and pobench report check runs against
    weights_dtype     the dtype the evaluated weights were loaded in, resolved (bfloat16 on CUDA for model.dtype auto,
                      float32 for auto elsewhere; else the run's model.dtype)
    reference         {"kind": "sft" | "dataset" | "alpaca_eval", ...}  (sft: model + the shared cache file; the
                      alpaca_eval set's outputs: generator, who wrote them as the file says, "gpt4_turbo" for
                      AlpacaEval 2's; a list where the file names several, null where it names none)
    judge             {"name", "kind": "reward_model" | "llm" | "gold", "held_out_accuracy": float | null, ...};
                      LLM judges add identity: what stands behind the name ({models, endpoints, config} of an
                      alpaca_eval config: the models asked for, the servers its OpenAI client config sends them to,
                      never a key, and a digest of the config and its templates; {decoder, dtype} of a local judge),
                      which pobench report names with the judge, so judges of one name that differ are not mixed;
                      an rm: judge's identity is {rm_info} (a digest of its rm_info.json) for one pobench trained,
                      else {weights} (a digest of its folder's files, or its hub commit);
                      held_out_accuracy: a reward model's held-out pair accuracy: an rm: judge's measured on the
                      run's own held-out pairs at evaluation (ties half), the auto judge's (on the run's pairs too)
                      and an rm: judge's on the alpaca_eval set from rm_info.json (ties wrong); held_out_accuracy_on
                      {suite, source, pairs, measured_by: "pobench eval" | "rm_info.json", run_held_out}: which
                      pairs (run_held_out: the evaluated run's own held-out pairs; the report names others); with
                      eval.judge_check_pairs > 0 also held_out_agreement {agreement, pairs, mean_preference}: how
                      often this judge picked the held-out chosen answer over the rejected one (any judge)
    win_rate          mean P(policy output beats reference output) in [0, 1]; ties count half
    win_rate_se, win_rate_ci95 [lo, hi]   standard error (null with one judged prompt); percentile bootstrap 95% CI
                                          (eval.bootstrap resamples)
    identical_to_reference                judged prompts whose output is the reference's, character for character
                                          (a policy that has not moved wins 0.5 there by construction)
    policy_first_share                    judged prompts the judge saw with the policy's answer first (coin order)
    order_agreement   (eval.judge_both_orders, pairwise judges) share of prompts whose two orders named the same
                      winner (a tie counts half): 1 for a judge blind to the order, near 0 for one that picks a side
    lc_win_rate, lc_win_rate_se, lc_method ("length_only_glm" | "alpaca_eval_glm_length_controlled_v1"), length_coef
                                          length_coef: the GLM's weight on tanh(standardised length difference),
                                          > 0 when the judge favours the policy where its output is the longer one;
                                          null, with lc_note, where every length difference is the same non-zero
                                          number (length and quality cannot be told apart); alpaca_eval's GLM only
                                          against the file's outputs (reference alpaca_eval or dataset; else lc_note),
                                          which must be GPT-4-turbo's on AlpacaEval's 805 instructions (else exit 2)
    avg_length, reference_avg_length      mean output length in characters (length_unit)
    reward_mean, reference_reward_mean    mean judge score of the outputs (reward-model / gold judges; else null)
    kl, kl_se, kl_info                    KL(policy || reference) estimated from samples (null with eval.kl_samples 0;
                                          kl_se null with one sample)
    held_out          {"final": {eval/... pair metrics}, "initial": {...}, "pairs": n} from train_summary.json
    suite, algorithm, seed, eval_time_s, versions {pobench, git_commit, python, torch, transformers, ..., device,
                      gpu (on CUDA)}: the device the evaluation ran on
    model_outputs     (alpaca_eval set only) path of model_outputs.json in alpaca_eval's format

`<run_dir>/generations.jsonl`: one row per prompt: index, id, prompt (chat messages), output, reference_output,
preference (P(policy wins), null if the judge gave none), policy_first (the order the judge saw; with
eval.judge_both_orders the coin's order, and preference_orders: the preferences in that order and the other), scores
({"policy", "reference"} for scoring judges, else null), finished, output_tokens, judge (name), judge_extra.
"""
