"""Read finished run folders into two pandas tables: one row per run, and one row per logged step.

A run folder is `<root>/<suite>/<algo>/seed<k>/` or, for a tuning grid, `<root>/<suite>/<algo>/<point>/seed<k>/`
(`<point>` names the grid values, e.g. `beta=0.01,lr=3e-7`). A run counts once `train_summary.json` exists.
`eval.json` is read in both of its forms: today's held-out-pairs-only form (`held_out_pairs`) and the form of
`pobench eval` (win rates, judge, `held_out`); fields it lacks stay empty (NaN).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

from pobench.config import read_yaml
from pobench.data import records_rule_of
from pobench.paths import saved_config
from pobench.engine.io import is_written_infinity, read_jsonl
from pobench.errors import PobenchError

# eval.json fields that are fractions in [0, 1]: a value outside is a broken file, not a result
FRACTIONS = ("win_rate", "lc_win_rate", "win_rate_se")
HELD_OUT_ACC = "eval/rewards/accuracies"
HELD_OUT_LOSS = "eval/loss"
NO_GRID = ""  # the grid point of a run made without --grid


def find_runs(root: Path) -> list[Path]:
    """Finished run folders under `root` (caches and other hidden folders excluded), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise PobenchError(f"{root}: no such results folder")
    runs = []
    for summary in root.rglob("train_summary.json"):
        rel = summary.parent.relative_to(root).parts if summary.parent != root else ()
        if any(p.startswith(".") for p in rel):
            continue
        runs.append(summary.parent)
    return sorted(runs)


def read_json(path: Path, required: bool = True):
    if not path.exists():
        if required:
            raise PobenchError(f"{path}: missing")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PobenchError(f"{path}: not valid JSON ({e})") from None


# the counts and clocks of a run, which the trainer always writes (NaN is no "not measured" there), and its results
SUMMARY_COUNTS = ("steps", "pairs_seen", "records_seen", "train_time_s", "reference_s", "global_batch_size",
                  "eval_pairs", "num_processes")
SUMMARY_NUMBERS = SUMMARY_COUNTS + ("pairs_per_s", "final_loss")


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_finite(v, path, key: str, nan_is_missing: bool = True) -> None:
    """Python's json reads Infinity and -Infinity: a mean over seeds would carry it into every table (and --format
    json, which writes strict JSON, could not write it), so an infinite result is refused. NaN stays what the
    readers make of it: not measured, left out of the means; but not in a count or a clock (`nan_is_missing`
    False), which the trainer always writes: a NaN step slipped past the order check and a NaN records_seen took a
    row off the curve's axis. The writer's infinity (+-INFINITY, pobench.engine.io) follows NaN's rule, as
    `measured` reads it: refused in a count or a clock, not measured in a result. `path` may carry a line number
    (metrics.jsonl:3)."""
    if not is_number(v):
        return
    if math.isinf(v) or (math.isnan(v) and not nan_is_missing):
        raise PobenchError(f"{path}: '{key}' must be a finite number, got {v!r}")
    if is_written_infinity(v) and not nan_is_missing:
        raise PobenchError(f"{path}: '{key}' must be a finite number, got {v!r} (how pobench writes an infinity)")


def measured(v):
    """`v` as the report reads a result: the writer's infinity (+-INFINITY, which pobench writes for an infinite loss
    or margin, e.g. a held-out pass of a diverged policy, which no training step checks) is not measured (None), as
    NaN is (the writer's null): averaged as a value, 1e308 and 0.5 overflowed (a traceback) and 1e308 twice gave
    inf, which --format json could not write. check_finite has refused it where NaN is no "not measured"."""
    return None if is_written_infinity(v) else v


def measured_metrics(metrics: dict | None) -> dict | None:
    """A dict of results (held-out metrics), each as `measured` reads it."""
    return metrics if not isinstance(metrics, dict) else {k: measured(v) for k, v in metrics.items()}


def pool_generation_seconds(summary: dict) -> float | None:
    """The candidate pools' generation time a run drew from (made before training, so not in train_time_s)."""
    pool = summary.get("candidate_pool")
    value = pool.get("generation_s") if isinstance(pool, dict) else None
    return measured(value) if is_number(value) else None


def read_summary(path: Path) -> dict:
    """A run's train_summary.json, its fields of the types the report and `pobench run` read (a file edited or
    written by something else is an error naming the key, not a crash in the table). Its values are as written
    (`pobench eval` keeps the held-out metrics in eval.json as they are): the report reads its results through
    `measured`."""
    summary = read_json(path)
    if not isinstance(summary, dict):
        raise PobenchError(f"{path}: expected a JSON object")
    for key in ("suite", "algorithm", "seed"):
        if key not in summary:
            raise PobenchError(f"{path}: missing key '{key}'")
    for key in ("suite", "algorithm"):
        if not isinstance(summary[key], str) or not summary[key]:
            raise PobenchError(f"{path}: '{key}' must be a name, got {summary[key]!r}")
    if not isinstance(summary["seed"], int) or isinstance(summary["seed"], bool):
        raise PobenchError(f"{path}: 'seed' must be an integer, got {summary['seed']!r}")
    for key in SUMMARY_NUMBERS:
        if summary.get(key) is not None and not is_number(summary[key]):
            raise PobenchError(f"{path}: '{key}' must be a number, got {summary[key]!r}")
        check_finite(summary.get(key), path, key, nan_is_missing=key not in SUMMARY_COUNTS)
    pool = summary.get("candidate_pool")
    check_finite(pool.get("generation_s") if isinstance(pool, dict) else None, path,
                 "candidate_pool.generation_s")   # the leaderboard's pool s
    for key in ("held_out_initial", "held_out_final"):
        metrics = summary.get(key)
        if metrics is None:
            continue
        if not isinstance(metrics, dict):
            raise PobenchError(f"{path}: '{key}' must be an object of held-out metrics, got {metrics!r}")
        for name, v in metrics.items():
            if v is not None and not is_number(v):
                raise PobenchError(f"{path}: '{key}.{name}' must be a number, got {v!r}")
            check_finite(v, path, f"{key}.{name}")
    return summary


# metrics.jsonl keys the report reads as numbers (a sampler's own `sampler/*` values are the plugin's business);
# the first four place a row on the curves' axes (and in order), so NaN there is no "not measured"
AXIS_METRICS = ("step", "pairs_seen", "records_seen", "time_s")
NUMERIC_METRICS = AXIS_METRICS + ("loss",)
NUMERIC_METRIC_PREFIXES = ("eval/", "rewards/", "logps/", "gold/")


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl's rows; the values the report reads are finite numbers (or null), as the trainer writes them
    (pobench.engine.io.MetricsLog: NaN as null)."""
    if not path.exists():
        return []
    rows = []
    for line, row in read_jsonl(path, "pairs_seen"):
        for key, v in row.items():
            numeric = key in NUMERIC_METRICS or key.startswith(NUMERIC_METRIC_PREFIXES)
            if numeric and v is not None and not is_number(v):
                raise PobenchError(f"{path}:{line}: '{key}' must be a number, got {v!r}")
            if numeric:
                check_finite(v, f"{path}:{line}", key, nan_is_missing=key not in AXIS_METRICS)
                row[key] = measured(v)
        # the trainer logs each step once, in order (a resume cuts the rows after its checkpoint first)
        if rows and is_number(row.get("step")) and is_number(rows[-1].get("step")) and row["step"] <= rows[-1]["step"]:
            raise PobenchError(f"{path}:{line}: step {row['step']} after step {rows[-1]['step']} (a repeated or "
                               f"out-of-order row)")
        rows.append(row)
    return rows


def grid_point_of(run_dir: Path, algo: str) -> str:
    """The folders between the algorithm's folder and `seed<k>`: the grid point's name ('' without a grid)."""
    parts = run_dir.parts
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == algo:
            return "/".join(parts[i + 1:-1])
    return NO_GRID


def judge_name(name, run_dir: Path | None = None):
    """A judge's name as eval.json records it, with an `rm:` folder or an `alpaca_eval:` configs.yaml (or the
    `alpaca_eval:local(<model>)` model folder) given as a relative path made absolute as newer evaluations record it:
    from the folder the run was started in (env.json's `cwd`), else the current one (paths.saved_config's rule).
    `rm:rm_uf` evaluated before paths were stored absolute and `rm:/work/rm_uf` after are one judge."""
    if not isinstance(name, str) or run_dir is None:
        return name
    local = re.fullmatch(r"alpaca_eval:local\((.*)\)", name)
    if local:
        model = saved_config({"eval": {"judge_model": local.group(1)}}, run_dir)["eval"]["judge_model"]
        return f"alpaca_eval:local({model})"
    return saved_config({"eval": {"judge": name}}, run_dir)["eval"]["judge"]


def judge_identity(judge: dict, path: Path | None = None) -> dict | None:
    """What eval.json's `judge.identity` says stands behind the judge's name, e.g. an LLM judge's models and endpoints
    (a local server answering under alpaca_eval's GPT-4-turbo config is not GPT-4-turbo), or a local judge's engine
    and dtype (vLLM in float16 and transformers in float32 give other verdicts under one name). None where it is not
    known: an eval.json written before the identity was recorded, except an rm: judge's (read from the rm_info it
    holds) and a local judge's engine (from its `judge_decoder`; transformers ran float32 then too, vLLM's `auto`
    dtype was not resolved, so it is unknown). A value of None is unknown too."""
    identity = judge.get("identity")
    rm_info = judge.get("scorer", {}).get("rm_info") if isinstance(judge.get("scorer"), dict) else None
    if identity is None and judge.get("kind") == "reward_model" and judge.get("spec") != "auto" and \
            isinstance(rm_info, dict):   # an rm: judge evaluated before the identity was recorded: its rm_info is
        from pobench.rewards import reward_model_identity
        identity = reward_model_identity(rm_info)
    if identity is None and judge.get("judge_decoder") in ("transformers", "vllm"):
        decoder = judge["judge_decoder"]
        dtype = judge.get("dtype") or ("float32" if decoder == "transformers" else None)
        identity = {"decoder": decoder, "dtype": dtype}
    if identity is None:
        return None
    if not isinstance(identity, dict) or not all(isinstance(v, (str, list, type(None))) for v in identity.values()):
        raise PobenchError(f"{path}: 'judge.identity' must be an object of names or lists of names, got {identity!r}")
    if identity.get("dtype") == "auto":   # the configured dtype, not the one the engine resolved it to
        identity = {**identity, "dtype": None}
    return identity


def judge_label(judge: dict, path: Path | None = None, run_dir: Path | None = None) -> str | None:
    """The judge as the report names judges (the runs' `judge` column): its name (judge_name), with what its identity
    says stands behind it (judge_identity), e.g. "alpaca_eval:local(m) [decoder vllm; dtype float16]". Judges are
    told apart by same_judge, which reads an identity not recorded as unknown, not as another judge."""
    name = judge_name(judge.get("name"), run_dir)
    identity = judge_identity(judge, path)
    if identity is None:
        return name
    parts = []
    for key, value in identity.items():
        value = ", ".join(map(str, value)) if isinstance(value, list) else value
        if value:
            parts.append(f"{key} {value}")
    return f"{name} [{'; '.join(parts)}]" if parts else name


def identity_text(identity: dict | None) -> str | None:
    """An identity as the runs table holds it (JSON text, so that pandas keeps it whole); None where not known."""
    return None if identity is None else json.dumps(identity, sort_keys=True)


def identities_agree(a: str | dict | None, b: str | dict | None) -> bool:
    """Whether two judge identities (dicts or identity_text) may be one: unknown (None) agrees with anything, as does
    a field either leaves unknown (None or absent); a field both know must be equal."""
    a, b = (json.loads(x) if isinstance(x, str) else x for x in (a, b))
    if not isinstance(a, dict) or not isinstance(b, dict):
        return True
    return all(a[k] == b[k] for k in set(a) & set(b) if a[k] is not None and b[k] is not None)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def same_judge(a: dict, b: dict) -> bool:
    """Whether two runs (rows of the runs table) were judged by one judge: the same name (judge_name) and identities
    that agree (identities_agree). An evaluation written before the identity was recorded is compared by name only:
    it was split from a newer one of the same judge. Rows without the name (none evaluated) compare their labels."""
    if _missing(a.get("judge_name")) or _missing(b.get("judge_name")):
        return a.get("judge") == b.get("judge")
    if a["judge_name"] != b["judge_name"]:
        return False
    ia, ib = (None if _missing(r.get("judge_identity")) else r.get("judge_identity") for r in (a, b))
    return identities_agree(ia, ib)


def held_out_elsewhere(judge: dict, suite, path: Path) -> str | None:
    """Where a judge's held-out pair accuracy was measured, where that was not the evaluated run's held-out pairs (an
    `rm:` judge's rm_info.json figure: rm:rm_uf judging suite myhh showed myuf's pairs' 1.000 as its accuracy), else
    None. eval.json's `judge.held_out_accuracy_on` says; one written before it was recorded held an rm: judge's
    rm_info.json figure, told apart by the suite rm_info.json names."""
    on = judge.get("held_out_accuracy_on")
    if on is None:
        rm_info = judge.get("scorer", {}).get("rm_info") if isinstance(judge.get("scorer"), dict) else None
        if judge.get("held_out_accuracy") is None or not isinstance(rm_info, dict) or judge.get("spec") == "auto":
            return None
        on = {"suite": rm_info.get("suite"), "source": rm_info.get("eval_source"), "pairs": rm_info.get("eval_pairs"),
              "measured_by": "rm_info.json", "run_held_out": rm_info.get("suite") == suite}
    if not isinstance(on, dict):
        raise PobenchError(f"{path}: 'judge.held_out_accuracy_on' must be an object, got {on!r}")
    if on.get("run_held_out"):
        return None
    pairs = f"{on['pairs']} " if on.get("pairs") is not None else ""
    of = f" of suite {on['suite']}" if on.get("suite") else ""
    source = f"{on['source']}; " if on.get("source") else ""
    return f"on {pairs}held-out pairs{of} ({source}{on.get('measured_by') or 'source not recorded'})"


# who wrote AlpacaEval 1's reference outputs (alpaca_eval.json's `generator`), which pobench read before it read
# AlpacaEval 2's (GPT-4-turbo's) and recorded the generator
ALPACA_EVAL_1_GENERATOR = "text_davinci_003"


def reference_generator(ev: dict, reference: dict) -> str | None:
    """Who wrote the reference outputs a win rate was measured against, where they are an eval file's (the
    alpaca_eval set): AlpacaEval 1's (text-davinci-003's) and 2's (GPT-4-turbo's) win rates are on other scales. An
    eval.json written before `reference.generator` was recorded read AlpacaEval 1's file, so it is read as that. None
    for other references (held-out records' responses, the SFT policy's answers)."""
    if ev.get("eval_set") != "alpaca_eval" or reference.get("kind") not in ("alpaca_eval", "dataset"):
        return None
    if "generator" not in reference:
        return ALPACA_EVAL_1_GENERATOR
    generator = reference["generator"]
    return ", ".join(map(str, generator)) if isinstance(generator, list) else \
        (None if generator is None else str(generator))


def eval_fields(ev: dict | None, path: Path) -> dict:
    """The leaderboard's fields from eval.json, old or new form; held-out pair metrics under `held_out`."""
    if not ev:
        return {}
    if not isinstance(ev, dict):
        raise PobenchError(f"{path}: expected a JSON object")
    judge = ev.get("judge") if isinstance(ev.get("judge"), dict) else {}
    reference = ev.get("reference") if isinstance(ev.get("reference"), dict) else {}
    out = {
        "win_rate": ev.get("win_rate"), "win_rate_se": ev.get("win_rate_se"), "lc_win_rate": ev.get("lc_win_rate"),
        "lc_method": ev.get("lc_method"), "avg_length": ev.get("avg_length"),
        "reference_avg_length": ev.get("reference_avg_length"), "length_unit": ev.get("length_unit"),
        "reward_mean": ev.get("reward_mean"),
        "kl": ev.get("kl"), "eval_set": ev.get("eval_set"), "n_prompts": ev.get("n_prompts"),
        "judge": judge_label(judge, path, Path(path).parent) if judge else None,
        "judge_name": judge_name(judge.get("name"), Path(path).parent),
        "judge_identity": identity_text(judge_identity(judge, path)) if judge else None,
        "judge_kind": judge.get("kind"),
        "judge_held_out_accuracy": judge.get("held_out_accuracy"), "reference_kind": reference.get("kind"),
        "reference_generator": reference_generator(ev, reference),
        "judge_held_out_on": held_out_elsewhere(judge, ev.get("suite"), path),
    }
    out["reference"] = out["reference_kind"] if out["reference_generator"] is None else \
        f"{out['reference_kind']} ({out['reference_generator']}'s outputs)"
    for key in FRACTIONS + ("avg_length", "reward_mean", "kl", "judge_held_out_accuracy"):
        if isinstance(out[key], float) and math.isnan(out[key]):
            out[key] = None   # not measured (a standard error of one judged prompt), as pobench eval writes it
    for key in FRACTIONS:
        v = out[key]
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 1):
            raise PobenchError(f"{path}: '{key}' must be a fraction in [0, 1], got {v!r}")
    for key in ("avg_length", "reward_mean", "kl", "judge_held_out_accuracy"):
        v = out[key]
        name = "judge.held_out_accuracy" if key == "judge_held_out_accuracy" else key   # as eval.json has it
        if v is not None and not is_number(v):
            raise PobenchError(f"{path}: '{name}' must be a number, got {v!r}")
        check_finite(v, path, name)
        out[key] = measured(v)
    held, name = ev.get("held_out") or ev.get("held_out_pairs"), "held_out"  # pobench eval's form, the older one
    if isinstance(held, dict) and "final" in held:
        held, name = held["final"], "held_out.final"   # pobench eval keeps {"final", "initial", "pairs"}
    if held is not None and not isinstance(held, dict):
        raise PobenchError(f"{path}: '{name}' must be an object of held-out pair metrics, got {held!r}")
    for metric, v in (held or {}).items():
        if v is not None and not is_number(v):
            raise PobenchError(f"{path}: '{name}.{metric}' must be a number, got {v!r}")
        check_finite(v, path, f"{name}.{metric}")
    out["held_out"] = measured_metrics(held) or {}
    return out


def gold_fields(gold: dict | None, path: Path) -> dict:
    """The final gold metrics of a suite with a known reward (gold_eval.json of the synthetic suite)."""
    if gold is not None and not isinstance(gold, dict):
        raise PobenchError(f"{path}: expected a JSON object")
    final = (gold or {}).get("final")
    if not final:
        return {}
    if not isinstance(final, dict):
        raise PobenchError(f"{path}: 'final' must be an object of gold/* metrics")
    out = {"gold_" + key: final.get("gold/" + key) for key in ("reward", "win_rate", "kl", "length")}
    bad = next((k for k, v in out.items() if v is not None and not is_number(v)), None)
    if bad:
        raise PobenchError(f"{path}: 'final.gold/{bad[len('gold_'):]}' must be a number, got {out[bad]!r}")
    for key, v in out.items():
        check_finite(v, path, f"final.gold/{key[len('gold_'):]}")
    return measured_metrics(out)


def gold_initial(run_dir: Path) -> dict:
    """gold/* metrics before training (the first point of gold_eval.json's curve; metrics.jsonl starts at step 1)."""
    path = run_dir / "gold_eval.json"
    gold = read_json(path, required=False) or {}
    curve = gold.get("curve") if isinstance(gold, dict) else None
    if isinstance(curve, list) and curve and isinstance(curve[0], dict) and curve[0].get("pairs_seen") == 0:
        out = {k: v for k, v in curve[0].items() if k.startswith("gold/")}
        for key, v in out.items():   # the first point of the curves metrics.jsonl's gold/* rows continue
            if v is not None and not is_number(v):
                raise PobenchError(f"{path}: 'curve[0].{key}' must be a number, got {v!r}")
            check_finite(v, path, f"curve[0].{key}")
        return measured_metrics(out)
    return {}


def software_fields(env, path: Path) -> dict:
    """What a run's numbers can depend on beyond its config, from env.json: pobench's version and commit, the
    numerical packages' versions, the device type and GPU model. Missing (older runs) fields are left out."""
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise PobenchError(f"{path}: expected a JSON object")
    packages = env.get("packages") if isinstance(env.get("packages"), dict) else {}
    device = env.get("device")
    commit = env.get("git_commit")
    if isinstance(commit, str):   # 12 hex digits name a commit; "-dirty" says the tree held uncommitted changes
        commit = commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")
    out = {"pobench": env.get("pobench"), "pobench commit": commit,
           **{name: packages.get(name) for name in ("torch", "transformers", "accelerate", "peft")},
           "device": str(device).split(":")[0] if device else None,
           "gpu": ", ".join(sorted(set(map(str, env["gpu"])))) if isinstance(env.get("gpu"), list) else None}
    return {k: v for k, v in out.items() if v is not None}


def samples_used(summary: dict) -> list[str]:
    """What a run's sampler drew from (report/versus.py SAMPLE_KEYS): a stored pool, generated before training,
    and samples drawn by the run itself; [] for the dataset's pairs alone."""
    pool = summary.get("candidate_pool")
    kinds = ["pool"] if isinstance(pool, dict) else []
    if isinstance(pool, dict) and pool.get("source") == "generated":
        kinds += ["generated", "drawn"]
    elif pool is None and summary.get("reward_model"):   # labelled its own samples (online samplers)
        kinds += ["drawn"]
    return kinds


def code_fields(summary: dict) -> dict:
    """{"algorithm"/"sampler": {"file", "sha1"}} from train_summary.json's `code` (trainer.code_identity): which
    version of a plugin's loss or sampler trained the run. Parts a run made before the record lacks are left out."""
    code = summary.get("code") if isinstance(summary.get("code"), dict) else {}
    out = {}
    for part in ("algorithm", "sampler"):
        entry = code.get(part)
        if isinstance(entry, dict) and isinstance(entry.get("sha1"), str):
            out[part] = {"file": entry.get("file") if isinstance(entry.get("file"), str) else None,
                         "sha1": entry["sha1"]}
    return out


def data_digest(report, path: Path) -> str | None:
    """12 hex digits naming the records a run trained and was held out on (data.json; None for older runs)."""
    if report is None:
        return None
    if not isinstance(report, dict):
        raise PobenchError(f"{path}: expected a JSON object")
    digest = report.get("records_digest")
    if not isinstance(digest, dict):
        return None
    return hashlib.sha1(json.dumps(digest, sort_keys=True).encode()).hexdigest()[:12]


def is_not_finite(v) -> bool:
    """Whether a result the trainer wrote stands for a value that was not finite: null (its NaN), a bare NaN (a file
    written before that rule) or its infinity (+-INFINITY)."""
    return v is None or (isinstance(v, float) and math.isnan(v)) or is_written_infinity(v)


def held_out_loss_not_finite(summary: dict, rows: list[dict]) -> list[int]:
    """The steps at which a run's held-out loss was measured and not finite (a policy that diverged on the held-out
    pairs, which no training step checks; the trainer said so as it ran): train_summary.json's held-out metrics
    before training (step 0) and at the end, and metrics.jsonl's rows (read_metrics'), where they hold the loss."""
    measured_at = [(0, summary.get("held_out_initial")), (summary.get("steps"), summary.get("held_out_final"))]
    measured_at += [(row.get("step"), row) for row in rows]
    return sorted({step for step, metrics in measured_at if isinstance(metrics, dict) and isinstance(step, int)
                   and HELD_OUT_LOSS in metrics and is_not_finite(metrics[HELD_OUT_LOSS])})


def read_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """(one leaderboard row, the run's curve rows). The curve starts at records_seen = 0 with the held-out
    metrics measured before the first update (train_summary's `held_out_initial`)."""
    summary = read_summary(run_dir / "train_summary.json")
    config_path = run_dir / "config.yaml"
    config = read_yaml(config_path) if config_path.exists() else {}   # one line naming the file and line if damaged
    config = saved_config(config, run_dir)   # an older run's relative paths made absolute, as newer runs' are
    eval_path = run_dir / "eval.json"
    raw_eval = read_json(eval_path, required=False)
    if eval_path.exists() and not (isinstance(raw_eval, dict) and raw_eval):   # null, [] or {}: damaged, not absent
        raise PobenchError(f"{eval_path}: expected a JSON object with the evaluation, got {raw_eval!r}")
    ev = eval_fields(raw_eval, eval_path)
    recorded = raw_eval.get("eval_config") if isinstance(raw_eval, dict) else None
    if isinstance(recorded, dict) and isinstance(config, dict):   # the settings the evaluation used (pobench eval --set)
        config = {**config, "eval": {**(config.get("eval") or {}), **recorded}}
    held = ev.pop("held_out", None) or measured_metrics(summary.get("held_out_final")) or {}
    data_report = read_json(run_dir / "data.json", required=False)
    rm = summary.get("reward_model")
    if isinstance(rm, str):   # a reward-model folder as an older run named it, relative: absolute, as newer runs do
        rm = saved_config({"pool": {"reward_model": rm}}, run_dir)["pool"]["reward_model"]
    row = {
        "suite": summary["suite"], "algo": summary["algorithm"], "grid_point": grid_point_of(run_dir, summary["algorithm"]),
        "seed": summary["seed"], "run_dir": str(run_dir),
        "held_out_acc": held.get(HELD_OUT_ACC), "held_out_margin": held.get("eval/rewards/margins"),
        "held_out_loss": held.get(HELD_OUT_LOSS),
        "train_time_s": summary.get("train_time_s"), "pairs_per_s": measured(summary.get("pairs_per_s")),
        # the part of train_time_s spent on reference log-probs; None (not measured) for runs from before it was
        # recorded, whose train_time_s leaves out those scored before step 1 (trainer.reference_charges)
        "reference_s": summary.get("reference_s"),
        "steps": summary.get("steps"), "pairs_seen": summary.get("pairs_seen"),
        "eval_pairs": summary.get("eval_pairs"), "global_batch_size": summary.get("global_batch_size"),
        "samples": samples_used(summary),
        "pool_source": (summary.get("candidate_pool") or {}).get("source")
        if isinstance(summary.get("candidate_pool"), dict) else None,
        "pool_s": pool_generation_seconds(summary),
        "data_digest": data_digest(data_report, run_dir / "data.json"),
        "records_rule": records_rule_of(data_report),   # the data rules its records were chosen by
        # what was trained on, as token ids (trainer.trained_digests); None for runs made before they were recorded
        "data_order_digest": summary.get("data_order_digest") if isinstance(summary.get("data_order_digest"), str)
        else None,
        "reward_model": rm if isinstance(rm, str) or rm is None else json.dumps(rm, sort_keys=True),
        "config": config or {},
        # compared between seeds of one algorithm only (versus.unlike_across_seeds): algorithms differ by design
        "code": code_fields(summary),
        "software": software_fields(read_json(run_dir / "env.json", required=False), run_dir / "env.json"),
        **{k: v for k, v in ev.items()},
        **gold_fields(read_json(run_dir / "gold_eval.json", required=False), run_dir / "gold_eval.json"),
    }
    curve = []
    initial = measured_metrics(summary.get("held_out_initial"))
    if isinstance(initial, dict):
        curve.append({"pairs_seen": 0, "records_seen": 0, "step": 0, "time_s": 0.0, **initial, **gold_initial(run_dir)})
    batch = summary.get("global_batch_size")
    if not isinstance(batch, int):   # runs from before global_batch_size: one process, train.batch_size records
        per_process = ((config or {}).get("train") or {}).get("batch_size")
        batch = per_process * (summary.get("num_processes") or 1) if isinstance(per_process, int) else None
    logged_rows = read_metrics(run_dir / "metrics.jsonl")
    # read as not measured in every table, as NaN is; named (build_report, render) so that it is not silently so
    row["held_out_loss_not_finite"] = held_out_loss_not_finite(summary, logged_rows)
    for logged in logged_rows:
        if "records_seen" not in logged and isinstance(batch, int) and isinstance(logged.get("step"), int):
            logged["records_seen"] = logged["step"] * batch   # runs logged before records_seen was
        curve.append(logged)
    keys = {k: row[k] for k in ("suite", "algo", "grid_point", "seed")}
    return row, [{**keys, **r} for r in curve]


def collect(root: Path):
    """(runs, curves) as pandas DataFrames; both empty when no run is finished under `root`."""
    import pandas as pd

    rows, curves, seen = [], [], {}
    for run_dir in find_runs(root):
        row, curve = read_run(run_dir)
        key = (row["suite"], row["algo"], row["grid_point"], row["seed"])
        if key in seen:   # e.g. a copy of a suite folder below the same root: which one is meant is not ours to guess
            raise PobenchError(f"{seen[key]} and {run_dir}: two runs of {row['suite']} {row['algo']}"
                               f"{' ' + row['grid_point'] if row['grid_point'] else ''} seed {row['seed']} under "
                               f"{root}; point the report at a folder that holds one of them")
        seen[key] = run_dir
        # the run's name among its suite's runs ("dpo/seed1"): what head_to_head.json files are keyed by; relative to
        # the nearest folder named after the suite, so that a report of a suite folder itself finds them too
        suite_dir = next((p for p in Path(run_dir).parents if p.name == row["suite"]), None)
        row["in_suite"] = run_dir.relative_to(suite_dir).as_posix() if suite_dir is not None else None
        rows.append(row)
        curves.extend(curve)
    runs = pd.DataFrame(rows)
    if not runs.empty:
        runs = runs.sort_values(["suite", "algo", "grid_point", "seed"], kind="stable").reset_index(drop=True)
    # runs without curve rows (no metrics.jsonl, no initial held-out point) still make a curve table with its keys
    return runs, pd.DataFrame(curves, columns=None if curves else ["suite", "algo", "grid_point", "seed", "pairs_seen",
                                                                   "records_seen", "step", "time_s"])
