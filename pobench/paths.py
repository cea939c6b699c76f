"""Local paths in configs: which folder a relative one is read from, and how a run stores it.

* A relative path written in a YAML file (a suite file, a `--config` file) is read from that file's folder, where it
  exists there. Where it does not, but exists from the current folder, it is read from there (what every suite
  file meant until this rule); where it exists in neither and is spelled as a path, it is named under the file's
  folder, so that the error says where it was looked for.
* A relative path typed on the command line (`--data`, `--model`, `--set`, pobench eval's `--eval-file`, `--judge
  rm:DIR`) is read from the current folder.
* A config made for a command holds every local path absolute, so the run's `config.yaml` (and `data.json`,
  `eval.json`, the caches keyed by them) name the file from any folder: `pobench eval RUN` and `--resume` work
  from anywhere, and two runs of one file started from two folders name it alike in `pobench report`. Runs saved
  before this hold relative paths, relative to the folder they were started in: `saved_config` reads them from the
  folder env.json records (`cwd`), else from the current one, as pobench always did.

Which values are local paths follows the loaders' own rule (data.loading.read_rows, models.check_model_source,
rewards._looks_like_hub_id, eval.runner.check_eval_config): a value that exists as a file or folder is local; one
that does not is local where it is spelled as a path (it starts with `.`, `/` or `~`, or ends like a data file, a
GGUF or a YAML file) and is otherwise a hub id, an alias or a keyword (`auto`, `sample`), left as it is.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

from pobench.errors import PobenchError

# the config keys whose values may be local paths, and how each is spelled
PATH_KEYS = ("data.path", "model.name_or_path", "pool.reward_model", "eval.judge", "eval.judge_model",
             "eval.eval_file", "eval.lc_difficulty_file")
_KEYWORDS = {"data.path": ("auto", "sample", "hub", "synthetic"), "pool.reward_model": ("auto",)}
_FILE_KEYS = ("eval.eval_file", "eval.lc_difficulty_file")   # always a local file
_DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".parquet", ".arrow")  # read_rows' formats


def _path_part(key: str, value) -> tuple[str, str] | None:
    """(prefix, path) of a config value that may name a local path ("rm:" for a judge's reward model), or None for a
    value that cannot: a keyword, a model alias, a gold reward, an alpaca_eval annotator config by name."""
    if not isinstance(value, str) or not value.strip() or value in _KEYWORDS.get(key, ()):
        return None
    if key == "eval.judge":
        kind, _, arg = value.partition(":")
        if kind == "rm" and arg:
            return "rm:", arg
        # alpaca_eval's own configs are names without a folder; a configs.yaml of one's own is a path
        if kind == "alpaca_eval" and ("/" in arg or arg.endswith((".yaml", ".yml"))):
            return "alpaca_eval:", arg
        return None
    if key == "pool.reward_model" and value.startswith("gold:"):
        return None
    if key in ("model.name_or_path", "eval.judge_model"):
        from pobench.config import BUILTIN_MODELS
        if value in BUILTIN_MODELS or value.split(":")[0] == "synthetic-ref":   # (models.resolve_model_path)
            return None
    return "", value


def _spelled_as_path(key: str, path: str) -> bool:
    """A value that names a local path even where nothing is there (a missing one is then "no such file")."""
    return (path.startswith((".", "/", "~")) or key in _FILE_KEYS
            or (key == "data.path" and path.endswith(_DATA_SUFFIXES))
            or (key in ("model.name_or_path", "eval.judge_model") and path.endswith(".gguf"))
            or (key == "eval.judge" and path.endswith((".yaml", ".yml"))))


def _absolute(path: str, base: Path) -> str:
    """`path` from `base`, `~` expanded, `..` folded (os.path.abspath: lexical, so a symlinked folder keeps the
    name the user gave it)."""
    return os.path.abspath(os.path.join(base, os.path.expanduser(path)))


def _local(key: str, path: str, base: Path) -> bool:
    return os.path.exists(_absolute(path, base)) or _spelled_as_path(key, path)


def _get(config: dict, key: str):
    section, _, name = key.partition(".")
    part = config.get(section)
    return part.get(name) if isinstance(part, dict) else None


def _set(config: dict, key: str, value) -> None:
    section, _, name = key.partition(".")
    config[section][name] = value


# absolute path -> the file and key that named it, for a path a YAML file named that is there from neither folder:
# "no such file" then says where it was written and which folder it was read from
_WRITTEN_IN: dict[str, str] = {}


def rebase_file_paths(layer: dict, file: Path) -> dict:
    """A suite or --config `file`'s values with its relative paths read from the file's folder (module docstring):
    absolute where they exist there or exist nowhere (the error then names where they were looked for); as written
    where they exist only from the current folder, or are not paths."""
    out = copy.deepcopy(layer)
    for key in PATH_KEYS:
        value = _get(out, key)
        part = _path_part(key, value)
        if part is None or os.path.isabs(os.path.expanduser(part[1])):
            continue
        prefix, path = part
        beside = _absolute(path, Path(file).parent)
        if os.path.exists(beside) or (not os.path.exists(path) and _spelled_as_path(key, path)):
            _set(out, key, prefix + beside)
            if not os.path.exists(beside):
                _WRITTEN_IN[beside] = f"{key} {value!r} in {file}, whose relative paths are read from its folder"
    return out


def written_in(path: str) -> str:
    """" (data.path '../x' in suites/mine.yaml, ...)" for a missing path a suite or --config file named; else ''."""
    return f" ({_WRITTEN_IN[str(path)]})" if str(path) in _WRITTEN_IN else ""


def absolute_paths(cfg) -> None:
    """Makes every local path of a config made for a command absolute, from the current folder (suite files' were
    made absolute when read), in place."""
    for key in PATH_KEYS:
        section, _, name = key.partition(".")
        holder = getattr(cfg, section)
        part = _path_part(key, getattr(holder, name))
        if part is not None and _local(key, part[1], Path.cwd()):
            setattr(holder, name, part[0] + _absolute(part[1], Path.cwd()))


def absolute_overrides(overrides: dict) -> dict:
    """Command-line overrides (pobench eval's and compare's `eval.*`) with their local paths absolute, as a config's
    are: the same value whichever way it was typed, in eval.json and the judges' caches."""
    out = copy.deepcopy(overrides)
    for key in PATH_KEYS:
        part = _path_part(key, _get(out, key))
        if part is not None and _local(key, part[1], Path.cwd()):
            _set(out, key, part[0] + _absolute(part[1], Path.cwd()))
    return out


def saved_config(config: dict, run_dir: Path, check: tuple = ()) -> dict:
    """A run's saved config.yaml with its relative local paths (runs saved before paths were stored absolute) read
    from the folder the run was started in (env.json's `cwd`), else from the current folder, as those runs were.
    `check`: keys whose local path must exist now, or an error says it is the run's config value and, for a
    relative one, that it is relative to the folder the run was started in."""
    out = copy.deepcopy(config) if isinstance(config, dict) else config
    if not isinstance(out, dict):
        return out
    from pobench.environment import started_by, started_in
    cwd = started_in(run_dir)
    base = Path(cwd) if cwd else Path.cwd()
    for key in PATH_KEYS:
        value = _get(out, key)
        part = _path_part(key, value)
        if part is None:
            continue
        prefix, path = part
        relative = not os.path.isabs(os.path.expanduser(path))
        if not _local(key, path, base):
            continue   # a hub id, as it was read when the run started
        where = _absolute(path, base)
        if key in check and not os.path.exists(where):
            place = f"{Path(run_dir) / 'config.yaml'}: {key} {value!r} (the run's config value"
            if not relative:
                raise PobenchError(f"{place}): no such file or folder")
            if cwd:
                raise PobenchError(f"{place}, relative to the folder the run was started in, {cwd}): no such file or "
                                   f"folder there")
            raise PobenchError(f"{place}, relative to the folder the run was started in, which its env.json does not "
                               f"record: it was started by `{started_by(run_dir)}`): not found from here "
                               f"({Path.cwd()}); run this command from the folder that run was started in")
        if relative:
            _set(out, key, prefix + where)
    return out

