"""The report dict -> sections (title, caption, columns, rows of text) -> a rich table, markdown, CSV or JSON.
The screen table and the markdown come from the same sections, so `pobench report --format markdown` shows
what `pobench run` printed."""
from __future__ import annotations

import dataclasses
import io
import json

from pobench.report.collect import HELD_OUT_LOSS
from pobench.report.convergence import ACCURACY, UNITS
from pobench.report.leaderboard import BUDGET_COLUMNS, METRICS
from pobench.report.versus import ACC_AUC, AUTO_JUDGE, DELTA_METRICS, ON_VALIDATION, SOFTWARE

DIGITS = {"win_rate": 3, "lc_win_rate": 3, "reward_mean": 3, "kl": 3, "avg_length": 1, "held_out_acc": 3,
          "gold_win_rate": 3, "gold_reward": 3, "gold_kl": 3, "gold_length": 1, "train_time_s": 0, "reference_s": 0,
          "pool_s": 0, "pairs_per_s": 2, "held_out_acc_auc": 3}
CURVE_TITLES = {ACCURACY: "held-out reward accuracy", "eval/rewards/margins": "held-out reward margin",
                "eval/loss": "held-out loss", "gold/win_rate": "gold win rate against the reference",
                "gold/reward": "gold reward", "gold/kl": "gold KL to the reference"}
VALIDATION = {"acc": "reward accuracy", "loss": "loss"}  # --select -> words
CI_NOTE = "mean ± half-width of the 95% t-interval over seeds (a single seed shows no interval)"


@dataclasses.dataclass
class Section:
    title: str
    caption: list[str]
    columns: list[str]
    rows: list[list[str]]


SECONDS = ("train_time_s", "reference_s", "pool_s")   # shown whole where that reads well


def seconds_digits(seconds) -> int:
    """Decimals for a time in seconds: none from 100 s, one from 1 s, two below (a sub-second run read "0 ± 0")."""
    seconds = abs(seconds or 0.0)
    return 0 if seconds >= 100 else 1 if seconds >= 1 else 2


def cell_digits(column: str, ci: dict | None) -> int:
    """Decimals of a leaderboard cell: the column's (DIGITS); a time's by the size of its mean."""
    if column not in SECONDS or not ci or ci.get("mean") is None:
        return DIGITS[column]
    return seconds_digits(ci["mean"])


def fmt_ci(ci: dict, digits: int = 3) -> str:
    if ci is None or ci.get("mean") is None:
        return "-"
    if ci.get("lo") is None:
        return f"{ci['mean']:.{digits}f}"
    return f"{ci['mean']:.{digits}f} ± {(ci['hi'] - ci['lo']) / 2:.{digits}f}"


PARTIAL_NOTE = "[k/n]: from the k of the row's n seeds whose runs hold the value (the others lack it: no evaluation yet, "\
               "or one that failed)"
NOT_FINITE = "HELD-OUT LOSS NOT FINITE"


def at_steps(steps: list[int]) -> str:
    return f"step{'s' if len(steps) > 1 else ''} {', '.join(map(str, steps))}"


def not_finite_line(s: dict, chosen_only: bool = True) -> str | None:
    """The caption line naming the suite's runs whose held-out loss was not finite (build's
    `held_out_loss_not_finite`), which the tables read as not measured; `chosen_only`: those of the rows shown (each
    algorithm at its chosen grid point). None where there are none."""
    chosen = {(r["algo"], r["grid_point"]) for r in s["leaderboard"]}
    named = [f"{e['algo']}{f' ({p})' if (p := e['grid_point']) else ''} seed {e['seed']} at {at_steps(e['steps'])}"
             for e in s.get("held_out_loss_not_finite") or () if not chosen_only or (e["algo"], e["grid_point"]) in chosen]
    if not named:
        return None
    return f"{NOT_FINITE}: the held-out loss of {'; '.join(named)} was not finite (diverged), read as not measured"


def not_finite_warnings(report: dict) -> list[str]:
    """One line per run of the report whose held-out loss was not finite, for `pobench report` to say beside the
    tables (which name only the rows they show)."""
    return [f"warning: {s['suite']} {e['algo']}{f' {p}' if (p := e['grid_point']) else ''} seed{e['seed']}: the "
            f"held-out loss was not finite (diverged) at {at_steps(e['steps'])}; the report reads it as not measured"
            for s in report["suites"] for e in s.get("held_out_loss_not_finite") or ()]


def of_seeds(ci: dict | None, seeds: int) -> str:
    """' [2/3]' when a value comes from fewer runs than the row's seeds, else ''."""
    n = (ci or {}).get("n")
    return f" [{n}/{seeds}]" if n and n < seeds else ""


def fmt_delta(ci: dict, digits: int = 3, adjusted: bool = False) -> str:
    """A signed difference; `*` marks an interval that excludes zero and, with `adjusted`, `†` a difference that
    stays significant after Holm's correction over the table's column (`p_holm` < 0.05)."""
    if ci is None or ci.get("mean") is None:
        return "-"
    holm = "†" if adjusted and ci.get("p_holm") is not None and ci["p_holm"] < 0.05 else ""
    return ("+" if ci["mean"] >= 0 else "") + fmt_around(ci, 0.0, digits) + holm


def fmt_signed(ci: dict, digits: int = 3) -> str:
    """A signed difference with its interval and no mark: an interval that describes, not a test."""
    if ci is None or ci.get("mean") is None:
        return "-"
    return ("+" if ci["mean"] >= 0 else "") + fmt_ci(ci, digits)


def fmt_around(ci: dict, center: float, digits: int = 3) -> str:
    """A value with its interval; `*` marks an interval that excludes `center` (0.5 for a win rate)."""
    if ci is None or ci.get("mean") is None:
        return "-"
    if ci.get("lo") is None:
        return f"{ci['mean']:.{digits}f}"
    # an interval of width 0 (values that all agree) tests nothing: t_test_p gives no p for it either
    sure = "*" if ci["hi"] > ci["lo"] and (ci["lo"] > center or ci["hi"] < center) else ""
    return f"{ci['mean']:.{digits}f} ± {(ci['hi'] - ci['lo']) / 2:.{digits}f}{sure}"


def fmt_point(p: float) -> str:
    return f"{int(p)}" if float(p).is_integer() else f"{p:g}"


def _judge_line(s: dict) -> str:
    if not s["judge"]:
        return "judge: none yet (held-out preference pairs only; `pobench eval` adds win rates, LC win rate, score, KL)"
    elsewhere = s.get("judge_held_out_on") or {}   # an rm: judge's rm_info.json figure: maybe another suite's pairs
    by_judge = {j: "/".join(f"{a:.3f}" for a in accs) + "".join(f" {on}" for on in elsewhere.get(j, ()))
                for j, accs in s["judge_held_out_accuracy"].items()}
    if len(s["judge"]) == 1 and by_judge:
        acc = f", its held-out pair accuracy {next(iter(by_judge.values()))}"
    elif by_judge:     # named: some judges may have recorded none
        acc = ", held-out pair accuracy " + ", ".join(f"{j} {a}" for j, a in by_judge.items())
    else:
        acc = ""
    return f"judge: {', '.join(s['judge'])} ({', '.join(s['judge_kind']) or 'kind not recorded'}{acc})"


def reference_time_notes(rows: list[dict], measured: list) -> list[str]:
    """What train s holds of the reference log-probs, and the rows whose runs are from before it held them all."""
    notes = []
    if ("reference_s", "ref s") in measured:
        notes.append("train s: the training steps' wall time, every algorithm's reference log-probs in it (ref s: that "
                     "part; those of the data's pairs and of an offline sampler's pools, scored before step 1, counted "
                     "at the steps that use them, an online sampler's fresh samples' inside its steps); pool s is "
                     "outside it")
    lacking = [r["algo"] for r in rows if r["reference_s"]["n"] < len(r["seeds"])]
    if lacking:
        notes.append(f"ref s not measured for runs of {', '.join(lacking)} (trained before it was recorded, or on a "
                     f"reference cache from then): their train s leaves out the reference log-probs scored before "
                     f"step 1, which an offline sampler's pools make large")
    return notes


def leaderboard_section(s: dict, select: str) -> Section:
    rows = s["leaderboard"]
    gridded = bool(s["grid"])
    measured = [(c, l) for c, l in METRICS if any(r[c]["mean"] is not None for r in rows)]
    missing = [l for c, l in METRICS if (c, l) not in measured and not c.startswith("gold_")]  # gold: some suites
    labels = {c: (s["score_label"] if c == "reward_mean" else l) for c, l in measured}
    caption = [_judge_line(s)]
    if s["eval_set"] or s["reference"]:
        caption.append(f"eval set: {', '.join(s['eval_set']) or '-'}; reference: {', '.join(s['reference']) or '-'}"
                       + (f"; LC: {', '.join(s['lc_method'])}" if s["lc_method"] else "")
                       + (f"; length in {', '.join(s['length_unit'])}" if s["length_unit"] else ""))
    if s["pool_reward_model"]:
        caption.append(f"candidate-pool reward model: {', '.join(s['pool_reward_model'])}")
    if ("reward_mean", "RM score") in measured and sum(j.startswith(AUTO_JUDGE) for j in s["judge"]) > 1:
        caption.append("RM score: each seed's own auto judge, whose scores have an offset of their own; rows share "
                       "the judges seed by seed, so compare them through the paired differences from the baseline")
    if any(c.startswith("gold_") for c, _ in measured):
        caption.append("gold/*: the suite's known reward on the final policy's samples against the reference "
                       "(gold_eval.json, measured by the trainer)")
    caption.append(CI_NOTE + ("" if not missing else f"; not measured: {', '.join(missing)}"))
    caption += reference_time_notes(rows, measured)
    if gridded:
        caption.append(f"each algorithm at its best grid point by {VALIDATION[select]} on the held-out "
                       f"pairs (validation, never by a win rate); the grid is listed below; the held-out "
                       f"pair metrics are the ones the point was chosen on, so they read optimistically, the more so "
                       f"the more grid points an algorithm had")
        if "held_out" in s["eval_set"]:
            caption.append("eval set held_out: the win rates are measured on the prompts of the same held-out records "
                           "whose pairs chose the grid point (the choice saw the pairs, never the generations or the "
                           "judge); --eval-set alpaca_eval keeps the two fully apart")
    columns = ["algo"] + (["grid point", "grid"] if gridded else []) + ["seeds"] + [labels[c] for c, _ in measured]
    body = []
    for r in rows:
        cells = [r["algo"]] + ([r["grid_point"] or "(default)", str(r["grid_points"])] if gridded else [])
        cells.append(",".join(map(str, r["seeds"])))
        cells += [fmt_ci(r[c], cell_digits(c, r[c])) + of_seeds(r[c], len(r["seeds"])) for c, _ in measured]
        body.append(cells)
    if any(of_seeds(r[c], len(r["seeds"])) for r in rows for c, _ in measured):
        caption.append(PARTIAL_NOTE)
    diverged = not_finite_line(s)
    if diverged:
        caption.append(diverged)
    if s.get("mixed_evaluations"):
        caption.append("MIXED EVALUATIONS: the rows' win rates come from other evaluations, so they are not on one "
                       "scale: " + "; ".join(f"{a}: {how}" for a, how in s["mixed_evaluations"].items()))
    for algo, unlike in (s.get("unlike_rows") or {}).items():
        ref = unlike["against"]
        at = (f"at seeds {','.join(map(str, unlike['seeds']))}" if unlike["seeds"] else
              f"no seed in common: its seed {unlike['across_seeds'][0]} against {ref}'s seed {unlike['across_seeds'][1]}")
        caption.append(f"UNLIKE ROWS: {algo}'s runs differ from {ref}'s in what a fair comparison needs equal, so the "
                       f"two rows do not compare ({at}; {algo}'s value vs {ref}'s): {'; '.join(unlike['differences'])}")
    for algo, unlike in (s.get("unlike_across_seeds") or {}).items():
        caption.append(f"UNLIKE SEEDS: {algo}'s runs differ in more than the seed, so its row is not one setting "
                       f"(against seed {unlike['against_seed']}): {'; '.join(unlike['differences'])}")
    return Section(f"leaderboard: {s['suite']}", caption, columns, body)


def grid_section(s: dict, select: str) -> Section:
    budget = ", ".join(f"{a} {v['points']}" for a, v in s["spread"].items())
    sizes = {v["points"] for v in s["spread"].values()}
    spreads = ", ".join(f"{a} {v['range']:.3f}" for a, v in s["spread"].items() if v["range"] is not None)
    caption = [f"grid points per algorithm: {budget}" + ("" if len(sizes) == 1 else " (UNEQUAL tuning budget)"),
               f"spread (max - min over the grid of the validation metric): {spreads or '-'}; acc AUC (the "
               f"tie-break): held-out accuracy averaged over the range that all of the algorithm's runs the points are "
               f"scored on cover",
               "* = chosen on validation; win rate shown for information only, never used to choose"]
    scoring = {r["algo"]: r.get("scoring", "alike") for r in s["grid"]}
    for algo, how in scoring.items():
        if how == "shared":
            on = next(r["scored_on"] for r in s["grid"] if r["algo"] == algo and r["scored_on"])
            caption.append(f"{algo}'s grid points ran on different seeds: each is scored (validation and acc AUC) on "
                           f"the seeds all of them have, {','.join(map(str, on))}, so that none wins on the luck of "
                           f"fewer seeds")
        elif how == "equal count":
            caption.append(f"{algo}'s grid points share no seed: each is scored on as many of its own seeds as the "
                           f"point with the fewest has (those most points have first), equally noisy means but not "
                           f"of the same seeds, so the choice is weaker than usual; run every point on the same "
                           f"seeds to compare them alike")
    diverged = not_finite_line(s, chosen_only=False) if select == "loss" else None   # the validation metric
    if diverged:
        caption.append(diverged + " (so left out of its point's validation)")
    uneven = any(how != "alike" for how in scoring.values())
    has_wr = any(r["win_rate"]["mean"] is not None for r in s["grid"])
    val = f"validation: held-out {'acc' if select == 'acc' else 'loss'}"
    columns = (["algo", "grid point", "seeds"] + (["scored on"] if uneven else []) + [val, "acc AUC"]
               + (["win rate"] if has_wr else []) + ["chosen"])
    body = [[r["algo"], r["grid_point"] or "(default)", str(r["seeds"])]
            + ([",".join(map(str, r["scored_on"])) or "-"] if uneven else [])
            + [fmt_ci(r["validation"]), fmt_ci(r["acc_auc"])]
            + ([fmt_ci(r["win_rate"])] if has_wr else []) + ["*" if r["chosen"] else ""] for r in s["grid"]]
    return Section(f"tuning grid: {s['suite']}", caption, columns, body)


def versus_section(s: dict) -> Section | None:
    v = s.get("versus")
    if not v or not v["rows"]:
        return None
    base, rows = v["baseline"], v["rows"]
    gridded = bool(s["grid"])
    measured = [(c, l) for c, l in DELTA_METRICS if any(r["delta"].get(c, {}).get("mean") is not None for r in rows)]
    labels = {c: (s["score_label"] if c == "reward_mean" else l) for c, l in measured}
    has_prompts = any(r["prompt_paired"] for r in rows)
    has_unlike = any(r["unlike_baseline"] or r["unpaired_seeds"] for r in rows)
    has_h2h = any(r.get("head_to_head") for r in rows)
    has_pairs = any(r.get("pair_paired") for r in rows)
    tests = sum(r.get("alike", True) for r in rows)   # rows unlike the baseline are no tests (versus.versus)
    many = tests > 1   # with one algorithm the correction changes nothing
    unit = UNITS.get((s.get("convergence") or {}).get("axis"), "records")
    spans = {r["algo"]: fmt_point(r["acc_auc_range"]) for r in rows if r.get("acc_auc_range")}
    ranges = (next(iter(spans.values())) if len(set(spans.values())) == 1
              else " / ".join(f"{v} ({a})" for a, v in spans.items()) or "-")
    caption = [f"each algorithm minus {base}"
               + (f" (at its chosen grid point {v['grid_point'] or '(default)'})" if gridded else "")
               + " at the same seed (same data order, held-out pairs, eval prompts, reference and judge), then "
               "mean ± half-width of the 95% t-interval over those seeds; * = the interval excludes 0 (each interval "
               "on its own: of many cells, about 1 in 20 excludes 0 by chance; seed-level rows only)"
               + (f"; † = still so after Holm's correction over the {tests} algorithms of its row (at most a 5% "
                  "chance that any of them is marked by luck alone)" if many else ""),
               (f"held-out acc AUC: held-out reward accuracy averaged over {unit} 0-{ranges} (how fast it learns), "
                f"the range that the runs compared in the column ({base}'s and the algorithm's at the seeds both have) "
                f"cover, so that no other run moves it; " if ACC_AUC in labels else "")
               + f"train time ×: the algorithm's training time over {base}'s, per seed"]
    picked = [r["algo"] for r in rows if r.get("chosen_on_held_out")]
    if picked:
        on = [labels[c] for c in ON_VALIDATION if c in labels] + (["per pair"] if has_pairs else [])
        whose = (f"{base}'s grid point (so in every column)" if s["spread"].get(base, {}).get("points", 1) > 1
                 else f"the grid points of {', '.join(picked)}")
        caption.append(f"{', '.join(on)}: measured on the held-out pairs that chose {whose}: the best of several "
                       f"points reads optimistically on them by selection alone, so these rows are not marked and "
                       f"have no p")
    if has_prompts:
        caption.append(f"per prompt: the judge's preference for the algorithm's output over the reference minus its "
                       f"preference for {base}'s, averaged over seeds, t-interval over prompts; better/tied/worse: "
                       f"prompts")
    if has_pairs:
        caption.append(f"per pair: on each held-out pair, whether the algorithm's final implicit reward ranks chosen "
                       f"over rejected minus whether {base}'s does, averaged over seeds, t-interval over pairs; "
                       f"won/tied/lost: pairs")
    if has_prompts or has_pairs:
        caption.append("the per-prompt and per-pair intervals describe these trained models (prompt, pair and judge "
                       "noise), not the algorithms: seed-to-seed training luck never enters them, so they are not "
                       "marked; only the seed-level Δ rows test \"is the algorithm better\"")
    if has_h2h:
        judges = sorted({j for r in rows if r.get("head_to_head") for j in r["head_to_head"]["judge"]})
        caption.append(f"head to head: the judge's P(the algorithm's answer beats {base}'s on the same prompt) "
                       f"(`pobench compare`; judge {', '.join(judges)}), mean ± t half-width over seeds, or with one "
                       f"seed ± half its bootstrap 95% interval over prompts; * = the interval excludes 0.5")
    if has_unlike:
        caption.append(f"unlike {base}: what differs from {base}'s runs although a fair comparison needs it equal "
                       f"(the numbers of such a row do not answer the question"
                       + ("; its Δ rows carry no * or † and no p, and it is left out of Holm's correction)"
                          if not all(r.get("alike", True) for r in rows) else ")")
                       + ("; software: the pobench code, packages or hardware the runs trained on (env.json), which "
                          "can move numbers by themselves: a fix, or another order of floating-point sums"
                          if any(d.startswith(SOFTWARE) for r in rows for d in r["unlike_baseline"]) else ""))
    # one column per algorithm, one row per measure: a handful of algorithms fit a terminal, ~18 measures would not
    columns = [f"vs {base}"] + [r["algo"] + (f" ({r['grid_point']})" if gridded and r["grid_point"] else "") for r in rows]

    def counts(p: dict | None) -> str:
        return f"{p['better']}/{p['tied']}/{p['worse']}" if p else "-"

    body = [["seeds"] + [",".join(map(str, r["seeds"])) or "none shared" for r in rows]]

    def delta(r: dict, c: str) -> str:
        if not r.get("alike", True) or (r.get("chosen_on_held_out") and c in ON_VALIDATION):
            return fmt_signed(r["delta"].get(c), DIGITS[c])
        return fmt_delta(r["delta"].get(c), DIGITS[c], many)

    body += [[f"Δ {labels[c]}"] + [delta(r, c) + of_seeds(r["delta"].get(c), len(r["seeds"])) for r in rows]
             for c, _ in measured]
    body.append(["train time ×"] + [fmt_ci(r["time_ratio"], 2) + of_seeds(r["time_ratio"], len(r["seeds"])) for r in rows])
    if any(of_seeds(r["delta"].get(c), len(r["seeds"])) for r in rows for c, _ in measured) or \
            any(of_seeds(r["time_ratio"], len(r["seeds"])) for r in rows):
        caption.append(PARTIAL_NOTE.replace("the row's n seeds", "the n seeds both runs have"))
    if has_prompts:
        body.append(["per prompt: Δ win rate"] + [fmt_signed(r["prompt_paired"]["difference"])
                                                  if r["prompt_paired"] else "-" for r in rows])
        body.append(["prompts better/tied/worse"] + [counts(r["prompt_paired"]) for r in rows])
    if has_pairs:
        body.append(["per pair: Δ held-out acc"] + [fmt_signed(r["pair_paired"]["difference"])
                                                    if r.get("pair_paired") else "-" for r in rows])
        body.append(["pairs won/tied/lost"] + [counts(r.get("pair_paired")) for r in rows])
    if has_h2h:
        body.append(["head to head"] + [fmt_around(r["head_to_head"]["win_rate"], 0.5) if r.get("head_to_head")
                                        else "-" for r in rows])
        body.append(["head to head won/tied/lost"] + [counts(r.get("head_to_head")) for r in rows])
    if has_unlike:
        body.append([f"unlike {base}"] + ["; ".join(r["unlike_baseline"] + (
            [f"seeds only one has: {','.join(map(str, r['unpaired_seeds']))}"] if r["unpaired_seeds"] else [])) or "-"
            for r in rows])
    return Section(f"against {base}: {s['suite']}", caption, columns, body)


def convergence_sections(s: dict, metrics=tuple(CURVE_TITLES)) -> list[Section]:
    conv = s["convergence"]
    if conv["x_max"] is None:   # no run shown has a curve past its start (metrics.jsonl lost): nothing to tabulate
        return []
    out = []
    for metric in metrics:
        rows = conv["metrics"].get(metric)
        if not rows:
            continue
        is_acc = metric == ACCURACY
        unit = UNITS.get(conv.get("axis"), "records")
        columns = ["algo"] + [f"@{fmt_point(p)} {unit}" for p in conv["points"]] + [f"AUC 0-{fmt_point(conv['x_max'])}"]
        if is_acc:
            columns += [f"{unit} to {conv['target']:g}", "reached"]
        body = []
        for r in rows:
            # a run that stopped short has no value at the later points: say from how many seeds each cell is
            cells = [r["algo"]] + [fmt_ci(ci) + of_seeds(ci, r["seeds"]) for ci in r["at"] + [r["auc"]]]
            if is_acc:
                cells += [fmt_ci(r["to_target"], 0), r["reached"]]   # `reached` says how many seeds did
            body.append(cells)
        along = ("records_seen, the training budget (steps x global batch; records 0 = before training)"
                 if unit == "records" else "pairs_seen (pairs 0 = before training; pairs per record are each "
                 "algorithm's own: --axis records compares equal budgets)")
        caption = [f"{metric} interpolated linearly between evaluations at fixed {along}; AUC = mean value over "
                   f"{unit} 0-{fmt_point(conv['x_max'])}, the range every run of the table covers; " + CI_NOTE]
        if is_acc:
            caption.append(f"{unit} to {conv['target']:g}: first crossing, interpolated; mean over the seeds that "
                           f"reached it")
        diverged = not_finite_line(s) if metric == HELD_OUT_LOSS else None
        if any(of_seeds(ci, r["seeds"]) for r in rows for ci in r["at"] + [r["auc"]]):
            why = "the others' curves do not reach that point" + (
                f", or their held-out loss is not finite there ({NOT_FINITE} below)" if diverged else "")
            caption.append(PARTIAL_NOTE.replace("the others lack it: no evaluation yet, or one that failed", why))
        if diverged:
            caption.append(diverged)
        out.append(Section(f"convergence: {CURVE_TITLES[metric]} ({s['suite']})", caption, columns, body))
    return out


def matched_kl_section(s: dict) -> Section | None:
    m = s.get("matched_kl")
    if not m or not m["rows"]:
        return None
    columns = ["algo"] + [f"@{m['kl']} {k:.3g}" for k in m["levels"]]
    body = [[r["algo"]] + [fmt_ci(ci) + of_seeds(ci, r["seeds"]) for ci in r["at"]] for r in m["rows"]]
    caption = [f"{m['value']} when {m['kl']} first reached each level during training (interpolated between "
               f"evaluations; levels up to the largest KL every run of the table, at its chosen grid point, reached); "
               + CI_NOTE]
    if any(of_seeds(ci, r["seeds"]) for r in m["rows"] for ci in r["at"]):
        caption.append(PARTIAL_NOTE)
    return Section(f"at matched KL: {m['value']} ({s['suite']})", caption, columns, body)


def sections(report: dict, convergence: bool = True) -> list[Section]:
    select = report["selection"]["metric"]
    out = []
    for s in report["suites"]:
        out.append(leaderboard_section(s, select))
        if s["grid"]:
            out.append(grid_section(s, select))
        against = versus_section(s)
        if against:
            out.append(against)
        if convergence:
            out.extend(convergence_sections(s))
            frontier = matched_kl_section(s)
            if frontier:
                out.append(frontier)
    return out


def to_markdown(secs: list[Section]) -> str:
    parts = []
    for sec in secs:
        lines = [f"### {sec.title}", ""]
        lines += [f"{c}  " for c in sec.caption] + [""]
        lines.append("| " + " | ".join(sec.columns) + " |")
        lines.append("|" + "|".join(" --- " for _ in sec.columns) + "|")
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in sec.rows]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def print_tables(secs: list[Section], console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text   # plain text: a caption's "[k/n]" or a cell's "[2/3]" is not rich markup

    for sec in secs:
        # as wide as the widest row needs, so that no number is cut (rich would squeeze to the terminal)
        need = sum(max([len(c)] + [len(r[i]) for r in sec.rows]) + 3 for i, c in enumerate(sec.columns)) + 1
        con = console or Console(width=max(need, Console().width))
        table = Table(title=Text(sec.title), caption=Text("\n".join(sec.caption)), caption_justify="left")
        for col in sec.columns:
            table.add_column(Text(col), no_wrap=True, overflow="fold")
        for row in sec.rows:
            table.add_row(*map(Text, row))
        con.print(table, highlight=False)


def to_csv(report: dict) -> str:
    """One row per suite x algorithm (at its chosen grid point): its seeds' optimizer steps and global batch (their
    distinct values, `;`-joined), mean, lo, hi, n of every leaderboard metric, and
    `unlike_rows`: what differs from the reference row (build's unlike_rows), empty where nothing does."""
    import pandas as pd

    rows = []
    for s in report["suites"]:
        for r in s["leaderboard"]:
            row = {"suite": s["suite"], "algo": r["algo"], "grid_point": r["grid_point"],
                   "grid_points": r["grid_points"], "seeds": ";".join(map(str, r["seeds"])),
                   "judge": ";".join(r["judge"]),   # the row's own judges (the auto judge is per seed)
                   **{col: ";".join(map(str, r[col])) for col in BUDGET_COLUMNS}}
            for col, _ in METRICS:
                for k in ("mean", "lo", "hi", "n"):
                    row[f"{col}_{k}"] = r[col][k]
            # the leaderboard's UNLIKE ROWS: a table read without its caption must not hide them
            unlike = (s.get("unlike_rows") or {}).get(r["algo"])
            row["unlike_rows"] = f"vs {unlike['against']}: {'; '.join(unlike['differences'])}" if unlike else ""
            row.update(versus_columns(s.get("versus"), r["algo"]))
            rows.append(row)
    frame = pd.DataFrame(rows)
    for col in frame.columns:   # counts: a row without the baseline's columns (the baseline's own) made them 2.0
        if col.endswith("_n"):
            frame[col] = frame[col].astype("Int64")
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    return buf.getvalue()


def versus_columns(v: dict | None, algo: str) -> dict:
    """The CSV's comparison with the baseline: vs_<metric>_{mean,lo,hi,n,p,p_holm} (differences at shared seeds, their
    t-test's p and its Holm-adjusted p over the algorithms compared),
    vs_time_ratio_*, vs_prompt_win_rate_* (the per-prompt paired difference), vs_pair_held_out_acc_* (per held-out
    pair), vs_head_to_head_win_rate_* (pobench compare), vs_unlike (what differs) and vs_unpaired_seeds (seeds only
    one of the two has). Only the seed-level differences have a p: the per-prompt and per-pair intervals leave the
    seeds' training luck out (versus.over_units)."""
    row = next((r for r in v["rows"] if r["algo"] == algo), None) if v else None
    if row is None:
        return {}
    out = {"baseline": v["baseline"]}
    cis = {**{f"vs_{c}": row["delta"].get(c) for c, _ in DELTA_METRICS}, "vs_time_ratio": row["time_ratio"],
           "vs_prompt_win_rate": (row["prompt_paired"] or {}).get("difference"),
           "vs_pair_held_out_acc": (row.get("pair_paired") or {}).get("difference"),
           "vs_head_to_head_win_rate": (row.get("head_to_head") or {}).get("win_rate")}
    for name, ci in cis.items():
        tested = name in {f"vs_{c}" for c, _ in DELTA_METRICS}   # seed-level differences from 0, t-tested
        for k in ("mean", "lo", "hi", "n") + (("p", "p_holm") if tested else ()):
            out[f"{name}_{k}"] = (ci or {}).get(k)
    out["vs_unlike"] = "; ".join(row["unlike_baseline"])
    out["vs_unpaired_seeds"] = ";".join(map(str, row["unpaired_seeds"]))
    return out


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, allow_nan=False)
