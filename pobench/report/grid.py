"""Fair tuning: `--grid 'lr=3e-7,1e-6;beta=0.01,0.1'` -> every algorithm's grid points, and the choice of each
algorithm's best point on the validation metric (held-out preference pairs, never a win rate).
`--grid default` takes each algorithm's own grid (`grid:` in its defaults; every shipped one has 4 points, the
same tuning budget), and combines with other keys: `--grid 'default;lr=1e-6,5e-6'`.

Keys are config keys as `--set` takes them (`train.lr`, `algorithm.beta`, `dpo.beta` for one algorithm only) or
short names (`lr`, `beta`) when exactly one place has that name: a field of the data/model/train/pool sections,
or a parameter of the run's algorithms (then it applies to the algorithms that have it). Each point runs in
`<root>/<suite>/<algo>/<point>/seed<k>/`, `<point>` being the values as typed, e.g. `lr=3e-7,beta=0.01`.
"""
from __future__ import annotations

import dataclasses
import itertools

import yaml

from pobench.config import parse_scalar
from pobench.errors import PobenchError


@dataclasses.dataclass
class GridKey:
    typed: str            # as the user wrote it, used in folder names
    path: tuple           # ('train', 'lr') or ('algorithm', 'beta')
    algos: tuple          # the algorithms it applies to
    values: list          # parsed values
    raw: list             # values as typed


DEFAULT = "default"  # in --grid: each algorithm's own grid, `grid:` in its defaults (pobench/registry.py)


def parse_grid(text: str) -> list[tuple[str, list[str]]]:
    """'lr=3e-7,1e-6;beta=0.01,0.1' -> [('lr', ['3e-7', '1e-6']), ('beta', ['0.01', '0.1'])]."""
    out, seen = [], set()
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        if part == DEFAULT:
            out.append((DEFAULT, []))
            continue
        if "=" not in part:
            raise PobenchError(f"--grid {part}: expected key=value1,value2,...")
        key, values = (s.strip() for s in part.split("=", 1))
        raw = [v.strip() for v in values.split(",") if v.strip()]
        if not key or not raw:
            raise PobenchError(f"--grid {part}: expected key=value1,value2,...")
        if key in seen:
            raise PobenchError(f"--grid: key '{key}' is given twice")
        if len(set(raw)) != len(raw):
            raise PobenchError(f"--grid {part}: a value is repeated")
        seen.add(key)
        out.append((key, raw))
    if not out:
        raise PobenchError("--grid: empty grid")
    return out


def resolve_key(key: str, algo_defaults: dict[str, dict]) -> tuple[tuple, tuple]:
    """(config path, algorithms it applies to) of a grid key; a short name must be unambiguous."""
    from pobench.config import SECTIONS
    algos = tuple(algo_defaults)
    if "." in key:
        head, name = key.split(".", 1)
        if head in SECTIONS:
            if name not in {f.name for f in dataclasses.fields(SECTIONS[head])}:
                raise PobenchError(f"--grid: unknown config key '{key}'")
            return (head, name), algos
        if head == "algorithm" or head in algo_defaults:
            scope = algos if head == "algorithm" else (head,)
            lacking = [a for a in scope if name not in algo_defaults[a]]
            if lacking:
                raise PobenchError(f"--grid: algorithm '{lacking[0]}' has no parameter '{name}' (key '{key}')")
            return ("algorithm", name), scope
        raise PobenchError(f"--grid: unknown config key '{key}' (use section.key, algorithm.key or <algo>.key)")
    places = [(s, key) for s, cls in SECTIONS.items() if key in {f.name for f in dataclasses.fields(cls)}]
    having = tuple(a for a in algos if key in algo_defaults[a])
    if having:
        places.append(("algorithm", key))
    if not places:
        raise PobenchError(f"--grid: unknown key '{key}' (not a config field nor a parameter of {', '.join(algos)})")
    if len(places) > 1:
        raise PobenchError(f"--grid: key '{key}' is ambiguous ({', '.join('.'.join(p) for p in places)}); "
                           f"write the full key")
    return places[0], (having if places[0][0] == "algorithm" else algos)


def _is_text(path: tuple, algos: tuple, algo_defaults: dict[str, dict]) -> bool:
    """Whether a grid key sets a text setting (a `str` config field, or an algorithm parameter whose default is text)."""
    from pobench.config import SECTIONS
    section, name = path
    if section == "algorithm":
        return all(isinstance(algo_defaults[a].get(name), str) for a in algos)
    annotation = {f.name: f.type for f in dataclasses.fields(SECTIONS[section])}[name]
    return str(annotation).replace(" ", "") in ("str", "str|None")


def grid_keys(text: str, algo_defaults: dict[str, dict]) -> list[GridKey]:
    keys = []
    for typed, raw in parse_grid(text):
        if typed == DEFAULT:
            keys += default_keys(algo_defaults)
            continue
        path, algos = resolve_key(typed, algo_defaults)
        text = _is_text(path, algos, algo_defaults)
        values = []
        for r in raw:
            value = _scalar(r, typed)
            if text and isinstance(value, (int, float)) and not isinstance(value, bool):
                value = r.strip()   # a number typed for a text setting is its text: 1.10, not 1.1
            if any(type(v) is type(value) and v == value for v in values):   # 1e-6 and 0.000001: one run twice
                raise PobenchError(f"--grid {typed}: {r!r} repeats an earlier value ({value!r})")
            values.append(value)
        keys.append(GridKey(typed, path, algos, values, raw))
    paths = [(k.path, a) for k in keys for a in k.algos]
    if len(set(paths)) != len(paths):
        raise PobenchError("--grid: two keys name the same config field")
    return keys


def default_keys(algo_defaults: dict[str, dict]) -> list[GridKey]:
    """`--grid default`: every algorithm's own grid, each key scoped to its algorithm."""
    from pobench.registry import algorithm_grid, get_algorithm
    keys = []
    for algo in algo_defaults:
        for name, values in algorithm_grid(get_algorithm(algo)).items():
            if name not in algo_defaults[algo]:
                raise PobenchError(f"algorithm '{algo}': its default grid names '{name}', not one of its parameters")
            keys.append(GridKey(name, ("algorithm", name), (algo,), list(values), [str(v) for v in values]))
    return keys


def _scalar(raw: str, key: str):
    """A value as --set reads it (pobench.config.parse_scalar: '3e-7' is a number, so grid values compare)."""
    try:
        return parse_scalar(raw)
    except (yaml.YAMLError, ValueError):
        raise PobenchError(f"--grid {key}: bad value {raw!r}") from None


def grid_points(keys: list[GridKey], algo: str) -> list[tuple[str, dict]]:
    """[(point name, --set-style overrides)] for one algorithm: the product of the keys that apply to it."""
    mine = [k for k in keys if algo in k.algos]
    points = []
    for combo in itertools.product(*[list(zip(k.raw, k.values)) for k in mine]):
        name = ",".join(f"{k.typed}={raw}" for k, (raw, _) in zip(mine, combo)).replace("/", "_")
        if len(name.encode()) > 255:   # a folder name: most filesystems take 255 bytes
            raise PobenchError(f"--grid: the point name {name[:60]}... is {len(name.encode())} bytes, more than a "
                               f"folder name may hold (255); use fewer keys or shorter values")
        overrides: dict = {}
        for k, (_, value) in zip(mine, combo):
            overrides.setdefault(k.path[0], {})[k.path[1]] = value
        points.append((name, overrides))
    return points


def budget_note(points_by_algo: dict[str, list]) -> str | None:
    """A warning when algorithms get different numbers of grid points (an unequal tuning budget)."""
    sizes = {a: len(p) for a, p in points_by_algo.items()}
    if len(set(sizes.values())) <= 1:
        return None
    return "unequal tuning budget: " + ", ".join(f"{a} {n} grid point(s)" for a, n in sizes.items())


# -- choosing the best point --------------------------------------------------------------------------------
SELECT = {  # validation metric -> (runs column, higher is better)
    "acc": ("held_out_acc", True),
    "loss": ("held_out_loss", False),
}


def choose_best(per_point: list[dict], select: str = "acc") -> str:
    """The best grid point by the seed-mean of the validation metric: held-out pair accuracy by default (its
    scale does not move with beta, unlike the loss and the margin), ties broken by the held-out accuracy's area
    under the curve, then by the order of `per_point` (the report passes the points sorted by name: the grid's own
    order is not recorded in the run folders). Each dict: point, value, tiebreak."""
    if select not in SELECT:
        raise PobenchError(f"--select {select}: choose one of {', '.join(SELECT)}")
    higher = SELECT[select][1]

    def key(item):
        i, d = item
        v = d["value"]
        v = float("-inf") if v is None else (v if higher else -v)
        t = d.get("tiebreak")
        return (v, float("-inf") if t is None else t, -i)
    return max(enumerate(per_point), key=key)[1]["point"]


def plan_grid(text: str | None, algo_defaults: dict[str, dict]) -> tuple[dict[str, list[tuple[str, dict]]], str | None]:
    """({algo: [(point name, overrides)]}, budget warning). Without --grid every algorithm has one point, named
    '' (its runs stay in <algo>/seed<k>/)."""
    if not text:
        return {a: [("", {})] for a in algo_defaults}, None
    keys = grid_keys(text, algo_defaults)
    points = {a: grid_points(keys, a) for a in algo_defaults}
    return points, budget_note(points)


def check_point_applied(cfg, overrides: dict, point: str) -> None:
    """A grid value that another setting overrode (`--set dpo.beta=...` outranks the grid's `beta`) would make
    grid points identical runs under different names: refuse it before anything runs."""
    for section, values in overrides.items():
        for key, want in values.items():
            got = cfg.algorithm.get(key) if section == "algorithm" else getattr(getattr(cfg, section), key)
            if got != want:
                raise PobenchError(f"--grid {point}: {cfg.algorithm_name}'s {section}.{key} resolves to {got!r}, not "
                                   f"{want!r} (a --set scoped to the algorithm outranks the grid); drop one of them")
