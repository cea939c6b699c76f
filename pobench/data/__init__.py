"""Suites' data: upstream rows -> PreferenceRecords -> tokenized pairs, split into train and held-out."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pobench.data.loading import (SAMPLES_DIR, LoadedSplit, content_key, hub_reachable, parse_rows, read_rows,
                                  source_has_split)
from pobench.data.records import PreferenceRecord, records_digest
from pobench.errors import PobenchError

# The version of the rules that choose a run's records, saved in its data.json as `records_rule`. 2: a held-out
# record whose prompt is also a training record's is dropped (prompt_in_train); a data.eval_split the data lacks is
# refused where it holds another split; a folder's whole split file beside that split's shards, or shards in two
# formats, are refused. A data.json without the key was written before (1: none of these): evaluating, comparing or
# resuming that run rebuilds its records by the rules it was made with, which its records_digest was taken of.
RECORDS_RULE = 2


@dataclass
class SuiteData:
    train: list[PreferenceRecord]
    eval: list[PreferenceRecord]
    report: dict = field(default_factory=dict)   # sources, row counts, skip counts: saved with the run
    # suites with a known reward (synthetic): evaluator(cfg, data, model, tokenizer, model_path, device) -> a hook
    # the trainer calls at every evaluation step (hook(step) -> metrics) and at the end (hook.finish(run_dir, rows))
    evaluator: object = None
    # check_config(cfg) raises PobenchError for settings this data cannot serve (a synthetic task's gold reward
    # named for another task); called while a run is planned, before anything is written
    check_config: object = None


def resolve_source(data_cfg) -> str:
    """'auto' -> the hub when reachable, else the shipped sample; 'sample' and 'hub' force one."""
    path = data_cfg.path
    if path == "auto" and not data_cfg.hub_id and not data_cfg.sample_train:
        # (DataConfig's default: a suite file without data.path gets here, and "ships no sample" named a choice
        # the user never made)
        raise PobenchError("data.path auto: the suite names neither a hub dataset (data.hub_id) nor a shipped sample, "
                           "so there is no data to read; set data.path in the suite file's data: section, or pass "
                           "--data PATH (or --set data.path=PATH)")
    if path == "auto":
        path = "hub" if data_cfg.hub_id and hub_reachable() else "sample"
    if path == "hub":
        if not data_cfg.hub_id:
            raise PobenchError("data.path hub: this suite names no data.hub_id")
        return data_cfg.hub_id
    if path == "sample":
        if not data_cfg.sample_train:
            why = "" if data_cfg.path == "sample" else f"the hub ({data_cfg.hub_id}) cannot be reached, and "
            raise PobenchError(f"data.path {data_cfg.path}: {why}this suite ships no sample (data.sample_train is "
                               f"empty); pass --data with a local copy of the data")
        return "sample"
    return path


def _load(source: str, split: str, data_cfg, seed: int, limit: int = 0, legacy: bool = False) -> LoadedSplit:
    # the suite's data_dir (hh-rlhf: harmless-base) belongs to the suite's own hub dataset, not to another one
    name, rows = read_rows(source, split, data_cfg.hub_data_dir if source == data_cfg.hub_id else None, legacy)
    return parse_rows(name, rows, data_cfg.schema, data_cfg.raw_rejected, seed, limit)


def load_suite_data(data_cfg, seed: int = 0, rule: int = RECORDS_RULE) -> SuiteData:
    """Train and held-out records. Without a held-out split, the last `eval_size` train records are held out
    (and never trained on). A held-out record whose prompt is a training record's is dropped (`prompt_in_train`).
    `rule`: a RECORDS_RULE version, older for a run made before it (run_records_rule)."""
    if data_cfg.path == "synthetic":  # generated, not read: pobench/synthetic/data.py (alike under every rule)
        from pobench.synthetic.data import load_synthetic
        return with_digests(load_synthetic(data_cfg), rule)
    return with_digests(_load_records(data_cfg, seed, rule), rule)


def with_digests(data: SuiteData, rule: int = RECORDS_RULE) -> SuiteData:
    """The report names the records' content (data.json): `data.path: auto` reads the hub or the sample depending
    on the network, and a local file can be edited, so two runs of one config may have trained on other data;
    `pobench report` and `--resume` compare these. `records_rule`: the rules they were chosen by."""
    data.report["records_digest"] = {"train": records_digest(data.train), "eval": records_digest(data.eval)}
    data.report["records_rule"] = rule
    return data


def run_records_rule(run_dir) -> int:
    """The RECORDS_RULE a run's records were chosen by: its data.json's `records_rule`; 1 for a data.json written
    before the key was; the current rule for a folder without data.json (nothing to match)."""
    from pathlib import Path

    from pobench.report.collect import read_json
    return records_rule_of(read_json(Path(run_dir) / "data.json", required=False))


def records_rule_of(report) -> int:
    """run_records_rule of a data.json's content (None where the run has none)."""
    if not isinstance(report, dict):
        return RECORDS_RULE
    rule = report.get("records_rule", 1)
    return rule if isinstance(rule, int) and not isinstance(rule, bool) and 1 <= rule <= RECORDS_RULE else RECORDS_RULE


def older_rules_warning(rules) -> str | None:
    """The one line a command says of the runs it reads (`rules`: each one's run_records_rule) that were made under
    older rules, else None. Their records are rebuilt by those rules, so that their digests match, and nothing
    else says so: a held-out set of rule 1 may hold training records' prompts, which inflates held-out metrics."""
    old = sum(rule < RECORDS_RULE for rule in rules)
    if not old:
        return None
    runs = "1 run was" if old == 1 else f"{old} runs were"
    return (f"{runs} made under older data rules (data.json without records_rule {RECORDS_RULE}) and read on the "
            f"records those rules chose: their held-out set may hold training records' prompts (since dropped as "
            f"prompt_in_train); to rebuild a run under the current rules, start it again (pobench run, without "
            f"--resume, into a new --out or after removing its folder)")


def _check_no_other_split(source: str, data_cfg, hub_data_dir: str | None) -> None:
    """A data.eval_split the data lacks is carved off the train split only where the data holds no other split (one
    file, a folder of train files): beside a test.jsonl it is a typo (`tset`), which trained and held out on the
    train split while the real test split went unread. `data.eval_split: null` carves on purpose."""
    from pobench.data.loading import source_splits
    splits = source_splits(source, hub_data_dir) or []
    train = data_cfg.train_split.split("[")[0]
    if any(s != train and not s.startswith(train + "-") for s in splits):   # (split_files' shards of train)
        raise PobenchError(f"{source}: no split '{data_cfg.eval_split}' (data.eval_split), but it holds "
                           f"{', '.join(splits)}: name the held-out one with data.eval_split, or set data.eval_split "
                           f"to null to hold out the last data.eval_size training records instead")


def _load_records(data_cfg, seed: int, rule: int = RECORDS_RULE) -> SuiteData:
    source = resolve_source(data_cfg)
    limit = data_cfg.max_train_records
    legacy = rule < 2   # read as before records_rule 2 (RECORDS_RULE)
    if source == "sample":
        train = _load(str(SAMPLES_DIR / data_cfg.sample_train), "train", data_cfg, seed)
        held = _load(str(SAMPLES_DIR / data_cfg.sample_eval), "test", data_cfg, seed) if data_cfg.sample_eval else None
    else:
        train = _load(source, data_cfg.train_split, data_cfg, seed, legacy=legacy)
        # A local file, a folder or a hub dataset without the split has no held-out split: carve it off the end, below,
        # rather than reading the same rows again as "held out".
        hub_data_dir = data_cfg.hub_data_dir if source == data_cfg.hub_id else None
        has_eval = bool(data_cfg.eval_split) and source_has_split(source, data_cfg.eval_split, hub_data_dir, legacy)
        if data_cfg.eval_split and not has_eval and not legacy:
            _check_no_other_split(source, data_cfg, hub_data_dir)
        held = _load(source, data_cfg.eval_split, data_cfg, seed, legacy=legacy) if has_eval else None
    if held is None:
        if len(train.records) <= data_cfg.eval_size:
            raise PobenchError(f"{train.source}: {len(train.records)} records, too few to hold out "
                               f"data.eval_size={data_cfg.eval_size}")
        eval_records = train.records[-data_cfg.eval_size:]
        train_records = train.records[:-data_cfg.eval_size]
    else:
        eval_records = held.records
        train_records = train.records
    # a held-out prompt that is also trained on (with other answers, or the same row in both splits upstream)
    # measures recall, not generalisation. Checked against every training record, not only the max_train_records
    # trained on, so that the held-out set does not depend on that limit; carved records are dropped, not replaced,
    # so that the training records stay the first N - eval_size
    eval_skipped = Counter(held.skipped if held else {})
    trained = {content_key(r.prompt) for r in train_records}
    # (a run made before records_rule 2 was held out on them: kept, for its records_digest to match)
    kept = eval_records if legacy else [r for r in eval_records if content_key(r.prompt) not in trained]
    if len(kept) < len(eval_records):
        eval_skipped["prompt_in_train"] = len(eval_records) - len(kept)
    eval_source = held.source if held else f"{train.source} (last {data_cfg.eval_size} records)"
    if not kept and not legacy:
        raise PobenchError(f"{eval_source}: every held-out record's prompt is also a training record's "
                           f"({len(eval_records)} records): nothing left to hold out")
    eval_records = kept[:data_cfg.eval_size]
    if limit:
        train_records = train_records[:limit]
    report = {
        "source": "sample" if source == "sample" else source,
        "train_source": train.source, "train_rows": train.rows_read, "train_records": len(train_records),
        "train_skipped": dict(train.skipped),
        "eval_source": eval_source, "eval_records": len(eval_records), "eval_skipped": dict(eval_skipped),
    }
    return SuiteData(train_records, eval_records, report)


def check_run_records(run_dir, report: dict, doing: str) -> None:
    """`doing` (a resume, an evaluation, a comparison) reads the records the run was trained on, as its data.json
    names them by digest: `data.path: auto` may now reach the hub where it read the sample, and a local file may
    have been edited since (the config alone cannot tell). Runs made before data.json held digests pass."""
    from pathlib import Path

    from pobench.report.collect import read_json
    started = read_json(Path(run_dir) / "data.json", required=False)
    started = started.get("records_digest") if isinstance(started, dict) else None
    now = report.get("records_digest")
    if isinstance(started, dict) and isinstance(now, dict) and started != now:
        split = "training" if started.get("train") != now.get("train") else "held-out"
        fix = "start a new run with another --out, or restore the data" if doing == "--resume" else \
            "read the data the run was trained on (its data.path and data.* settings, the file as it was)"
        raise PobenchError(f"{run_dir}: {doing} on other {split} records than the run started on (data.json's "
                           f"records_digest; now read from {report.get('train_source')}); {fix}")


def describe_loaded(report: dict) -> str:
    """One line for a run's console: what was read and, per split, the rows skipped by reason."""
    skipped = [f"skipped {split} rows: {report[f'{split}_skipped']}"
               for split in ("train", "eval") if report[f"{split}_skipped"]]
    return "; ".join([f"data: {report['train_records']} train / {report['eval_records']} held-out records from "
                      f"{report['train_source']}", *skipped])
