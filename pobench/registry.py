"""Named registries filled by decorators; algorithms and suites are discovered lazily.

Where algorithms come from, in order: the `algorithms/` folder of this checkout (or of the installed
package, where the wheel ships it as `pobench/algorithms/`), the `pobench.algorithms` entry point group of
installed distributions, and `--plugin path.py` files. Files are loaded by path, so no generic top-level
module named `algorithms` ever lands in site-packages.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
from importlib import metadata
from pathlib import Path

import yaml

from pobench.config import load_yaml
from pobench.errors import PobenchError

ALGORITHMS: dict[str, type] = {}
SAMPLERS: dict[str, object] = {}

_PACKAGE_DIR = Path(__file__).parent
_discovered = False


def register_algorithm(name: str):
    """Class decorator: `@register_algorithm("dpo")`. The class gives `sampler`, `needs_reference`,
    `defaults` (YAML text: the algorithm's parameters with their default values) and `loss(...)`."""
    def wrap(cls):
        from pobench.config import check_suite_name
        # the name is a folder of every run (<out>/<suite>/<algorithm>/seed<k>): '../evil' wrote outside the suite's
        check_suite_name(name if isinstance(name, str) else "", f"@register_algorithm in {_source(cls)}",
                         "algorithm")
        if name in ALGORITHMS and ALGORITHMS[name].__module__ != cls.__module__:   # files: module names are generated
            raise PobenchError(f"algorithm '{name}' is registered twice ({_source(ALGORITHMS[name])} and {_source(cls)})")
        where = f"algorithm '{name}' ({_source(cls)})"
        if not isinstance(getattr(cls, "sampler", None), str):
            raise PobenchError(f"{where}: `sampler` must name a registered sampler (a string such as 'dataset_pair')")
        if not callable(getattr(cls, "loss", None)):
            raise PobenchError(f"{where}: it has no `loss(self, policy, reference, cfg)` method")
        if not hasattr(cls, "needs_reference") or isinstance(inspect.getattr_static(cls, "needs_reference"), property):
            raise PobenchError(f"{where}: it has no `needs_reference` class attribute (True when its loss reads the "
                               f"reference model's log-probs)")
        cls.name = name
        _defaults_yaml(cls)   # its defaults block must read, now rather than mid-run
        ALGORITHMS[name] = cls
        return cls
    return wrap


def _registered() -> set:
    """What the registries hold, so that a --plugin file that adds nothing is warned about (a missing decorator).
    Those a plugin may fill besides algorithms and samplers are looked at where already imported (importing them
    here would cost every command their imports)."""
    registries = [ALGORITHMS, SAMPLERS]
    for module, attr in (("pobench.rewards", "GOLD_REWARDS"), ("pobench.generation", "BACKENDS"),
                         ("pobench.eval.judges", "JUDGES")):
        registries.append(getattr(sys.modules.get(module), attr, {}))
    return {(i, k, id(v)) for i, r in enumerate(registries) for k, v in r.items()}


def source_file(obj) -> str | None:
    """The file a registered class's module was loaded from (None for one built without a file)."""
    return getattr(sys.modules.get(obj.__module__), "__file__", None)


def _source(obj) -> str:
    """The file a registered class comes from, for messages."""
    return str(source_file(obj) or obj.__module__)


def register_sampler(name: str):
    """Class decorator for samplers (see pobench/sampling/__init__.py for the interface). A name is registered once:
    a plugin that reused a built-in's name would change every algorithm built on it, silently."""
    def wrap(cls):
        known = SAMPLERS.get(name)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise PobenchError(f"sampler '{name}' is registered twice ({_source(known)} and {_source(cls)})")
        cls.name = name
        SAMPLERS[name] = cls
        return cls
    return wrap


def builtin_dir(name: str) -> Path:
    """`algorithms/` or `suites/`: inside the installed package (wheel) or beside it (checkout, editable)."""
    for candidate in (_PACKAGE_DIR / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise PobenchError(f"cannot find the built-in '{name}' folder next to {_PACKAGE_DIR}")


def load_plugin(path: str | Path) -> None:
    """Import a Python file by path; its @register_algorithm decorators fill the registry."""
    path = Path(path)
    if not path.is_file():
        raise PobenchError(f"--plugin {path}: no such file")
    path = path.resolve()
    if path.parent == builtin_dir("algorithms").resolve():
        module_name = f"pobench.algorithms.{path.stem}"
    else:   # keyed by the file, not its name alone: two plugins both called my_algo.py are two modules
        module_name = f"pobench.plugins.{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    before = _registered()
    try:
        spec.loader.exec_module(module)
    except PobenchError:
        raise
    except Exception as e:
        del sys.modules[module_name]
        raise PobenchError(f"{path}: failed to import ({type(e).__name__}: {e})") from None
    if _registered() <= before and module_name.startswith("pobench.plugins."):
        from rich.console import Console
        from rich.markup import escape
        Console(stderr=True).print(f"[yellow]warning:[/yellow] --plugin {escape(str(path))}: registers no algorithm "
                                   f"or sampler (@register_algorithm / @register_sampler)", highlight=False,
                                   soft_wrap=True)


def discover(plugins: list[str] | tuple = ()) -> None:
    global _discovered
    if not _discovered:
        _discovered = True
        import pobench.sampling  # noqa: F401  (registers the built-in samplers)
        import pobench.sampling.mc_kernel  # noqa: F401
        import pobench.sampling.rso  # noqa: F401
        import pobench.sampling.online  # noqa: F401
        for path in sorted(builtin_dir("algorithms").glob("*.py")):
            if not path.name.startswith("_"):
                load_plugin(path)
        for ep in metadata.entry_points(group="pobench.algorithms"):
            try:
                ep.load()
            except Exception as e:
                raise PobenchError(f"entry point {ep.name} ({ep.value}) failed to load: {type(e).__name__}: {e}") from None
    for path in plugins:
        load_plugin(path)


def get_algorithm(name: str):
    discover()
    if name not in ALGORITHMS:
        raise PobenchError(f"unknown algorithm '{name}' (known: {', '.join(sorted(ALGORITHMS))})")
    return ALGORITHMS[name]()


def algorithm_defaults(algo) -> dict:
    """The algorithm's parameters and their default values (its `grid:` entry is not a parameter)."""
    data = _defaults_yaml(algo)
    data.pop("grid", None)
    return data


def algorithm_grid(algo) -> dict:
    """{parameter: [values]}: the algorithm's default tuning grid, `grid:` in its defaults (`--grid default`)."""
    grid = _defaults_yaml(algo).get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise PobenchError(f"algorithm '{getattr(algo, 'name', algo)}': 'grid' in its defaults must map parameters "
                           f"to non-empty lists of values")
    return grid


def _defaults_yaml(algo) -> dict:
    """The `defaults` block (YAML text, or a dict) as a dict; anything else is an error naming the algorithm."""
    text = getattr(algo, "defaults", "") or ""
    where = f"algorithm '{getattr(algo, 'name', algo)}' ({_source(algo)})"
    if isinstance(text, dict):
        return dict(text)
    if not isinstance(text, str):
        raise PobenchError(f"{where}: `defaults` must be YAML text (or a dict), not a {type(text).__name__}")
    try:
        data = load_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise PobenchError(f"{where}: bad YAML in `defaults`{line} ({getattr(e, 'problem', None) or e})") from None
    if data is not None and not isinstance(data, dict):
        raise PobenchError(f"{where}: `defaults` must map parameter names to values, got a {type(data).__name__}")
    return dict(data or {})


def get_sampler(name: str, algorithm: str | None = None):
    discover()
    if name not in SAMPLERS:
        asked = f"algorithm '{algorithm}': " if algorithm else ""
        raise PobenchError(f"{asked}unknown sampler '{name}' (known: {', '.join(sorted(SAMPLERS))})")
    return SAMPLERS[name]


def suite_files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(builtin_dir("suites").glob("*.yaml"))}


def is_suite_path(name: str) -> bool:
    """A --suite (or `pobench data SUITE`) that names a file rather than a shipped suite: it has a folder in it or
    ends in .yaml/.yml. A missing one is then "no such file", not an unknown suite name."""
    return "/" in name or os.sep in name or name.endswith((".yaml", ".yml"))


def load_suite(name: str) -> dict:
    from pobench.config import NOT_IN_SUITE, TOP_LEVEL, check_layer, check_suite_name, read_yaml
    if is_suite_path(name):
        path, suite = Path(name), Path(name).stem
        if not path.exists():   # (a folder is named by read_yaml)
            raise PobenchError(f"{name}: no such suite file")
    else:
        files = suite_files()
        if name not in files:
            raise PobenchError(f"unknown suite '{name}' (known: {', '.join(files)}; or a path to a suite .yaml)")
        path, suite = files[name], name
    data = read_yaml(path)
    for key, option in (("seed", "--seeds"), ("algorithm_name", "--algo")):
        if key in data:   # the command's own choice would replace it silently
            raise PobenchError(f"{path}: '{key}' is chosen with {option}, not in a suite file")
    if "algorithm" in data:   # merged under the algorithm's defaults, a suite's parameters were silently outranked
        raise PobenchError(f"{path}: 'algorithm' does not go in a suite file: algorithm parameters are set with "
                           f"--config (an `algorithm:` section for every algorithm, `dpo:` for one) or --set (e.g. "
                           f"--set dpo.beta=0.2)")
    if isinstance(data.get("suite"), str):   # (another type is refused where the config is typed)
        check_suite_name(data["suite"], f"{path}: 'suite'")
    unknown = [key for key in data if key not in TOP_LEVEL]
    if unknown:
        algorithms = set(ALGORITHMS) | {p.stem for p in builtin_dir("algorithms").glob("*.py")}   # (none imported)
        hint = (f"; {unknown[0]}'s parameters go in --config or --set (e.g. --set {unknown[0]}.beta=0.2), not in a "
                f"suite file" if unknown[0] in algorithms else "")
        raise PobenchError(f"unknown config key '{unknown[0]}' in {path} (known: "
                           f"{', '.join(sorted(TOP_LEVEL - set(NOT_IN_SUITE)))}{hint})")
    check_layer(data, str(path), NOT_IN_SUITE)
    from pobench.paths import rebase_file_paths
    data = rebase_file_paths(data, path)   # `data.path: ../mydata` is beside the suite file, not the shell
    data.setdefault("suite", suite)
    return data


def suite_source(name: str) -> dict | None:
    """Which suite file `--suite name` reads, by place and content, for env.json: {"file": ..., "sha1": ...}. A shipped
    suite is named "builtin:<name>", the same whichever install holds it (its edits are pobench's own, which env.json's
    version records); any other by its absolute path. None where `name` names no file (load_suite refuses it)."""
    path = Path(name)
    if is_suite_path(name):
        file = str(path.resolve()) if path.is_file() else None
    else:
        path = suite_files().get(name)
        file = f"builtin:{name}" if path is not None else None
    if file is None:
        return None
    return {"file": file, "sha1": hashlib.sha1(path.read_bytes()).hexdigest()[:12]}
