"""Rows from the hub, a local file or folder, or the shipped sample -> PreferenceRecords, with skip counts.

Local jsonl/json files are read line by line here (not through `datasets`) so that a bad line is reported
with its file and row number; parquet, arrow, `save_to_disk` folders and hub ids go through `datasets`.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import socket
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from pobench.data import hh, ultrafeedback
from pobench.data.hh import RowSkip
from pobench.data.records import PreferenceRecord
from pobench.errors import PobenchError

SAMPLES_DIR = Path(__file__).parent / "samples"
JSON_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")
# datasets' metadata files, never a split's data (dataset_infos.json beside a hub repo's split files)
NOT_SPLITS = ("dataset_infos", "dataset_info", "dataset_dict", "state")
SCHEMAS = ("hh", "ultrafeedback-binarized", "ultrafeedback-raw", "ultrafeedback-onpolicy")


class Element(int):
    """The number of a JSON array file's element: not a line number, so errors say "file (element N)" where they
    say "file:N" of a line (a record's id, "<file>:N", is the same either way)."""


class _ShardElement(str):
    """"<shard>:N" for element N of a JSON array shard in a folder of split files."""


def row_place(source: str, row) -> str:
    """A row's place for an error message: "file:N" (a line or a table's row), "file (element N)"."""
    if isinstance(row, Element):
        return f"{source} (element {row})"
    if isinstance(row, _ShardElement):
        shard, n = row.rsplit(":", 1)
        return f"{source}:{shard} (element {n})"
    return f"{source}:{row}"


@dataclass
class LoadedSplit:
    records: list[PreferenceRecord]
    source: str                                  # what was actually read (recorded in the run's config)
    rows_read: int = 0
    skipped: Counter = field(default_factory=Counter)   # reason -> count


def hub_offline() -> bool:
    """huggingface_hub's or datasets' offline mode (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE, any value they read as
    true): the hub is not asked, its local cache is read."""
    from huggingface_hub import constants
    return bool(constants.HF_HUB_OFFLINE) or \
        os.environ.get("HF_DATASETS_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the hub (HF_ENDPOINT's host: huggingface.co or a mirror) answers, offline mode aside."""
    if hub_offline():
        return False
    from urllib.parse import urlparse

    from huggingface_hub import constants
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def hub_logs_quiet():
    """huggingface_hub logs each failed request it retries: a failure reaches the user as pobench's one line."""
    from huggingface_hub.utils import logging as hub_logging
    level = hub_logging.get_verbosity()
    hub_logging.set_verbosity_error()
    try:
        yield
    finally:
        hub_logging.set_verbosity(level)


@contextlib.contextmanager
def datasets_logs_quiet():
    """datasets logs a local file it cannot read (as an error) before it raises: the failure reaches the user as
    pobench's one line, not two."""
    from datasets.utils import logging as datasets_logging
    level = datasets_logging.get_verbosity()
    datasets_logging.set_verbosity(datasets_logging.CRITICAL)
    try:
        yield
    finally:
        datasets_logging.set_verbosity(level)


def _empty_parquet(path: Path) -> bool:
    """A parquet file with a schema and no rows, which datasets refuses ("Instruction "train" corresponds to no
    data!", after a progress bar of 0 examples)."""
    import pyarrow.parquet as pq
    try:
        return pq.ParquetFile(path).metadata.num_rows == 0
    except Exception:   # unreadable: the caller reports datasets' error
        return False


def _open_binary(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _decode(raw: bytes, path: Path, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PobenchError(f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start} of the line)") from None


def _too_long(error: ValueError) -> str:
    """json's one ValueError that is not a JSONDecodeError: Python's limit on the digits of an integer it reads
    (its advice, sys.set_int_max_str_digits, is for programmers, not for whoever wrote the file)."""
    return str(error).split(";")[0] or type(error).__name__


def _check_text(row, where: str) -> None:
    """A JSON escape can spell a lone UTF-16 surrogate ("\\ud800"), which no tokenizer (and no UTF-8 file) takes."""
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise PobenchError(f"{where}: text with a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its "
                           f"pair): not a character") from None


def read_json_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(1-based line number, object) for JSON Lines; (1-based Element number, object) for a JSON array file.

    Read as bytes and decoded line by line, so that a bad line, a non-UTF-8 byte or a truncated gzip is reported
    with its line number (leading blank lines count)."""
    line = 0
    first = True
    try:
        with _open_binary(path) as f:
            for raw in f:
                line += 1
                text = _decode(raw, path, line)
                if line == 1:
                    text = text.lstrip("\ufeff")  # a UTF-8 byte order mark
                if not text.strip():
                    continue
                if first and text.lstrip().startswith("["):   # a JSON array: one document, not JSON Lines
                    rest = f.read()
                    try:
                        text += rest.decode("utf-8")
                    except UnicodeDecodeError as e:
                        bad_line = line + 1 + rest[:e.start].count(b"\n")
                        raise PobenchError(f"{path}:{bad_line}: not UTF-8 text ({e.reason})") from None
                    try:
                        rows = json.loads(text)
                    except json.JSONDecodeError as e:
                        raise PobenchError(f"{path}:{line - 1 + e.lineno}: bad JSON ({e.msg}, column {e.colno})") from None
                    except ValueError as e:   # an integer too long for Python to read (over 4300 digits)
                        raise PobenchError(f"{path}: bad JSON ({_too_long(e)})") from None
                    except RecursionError:
                        raise PobenchError(f"{path}: bad JSON (nested too deeply)") from None
                    for i, row in enumerate(rows, 1):
                        _check_text(row, row_place(str(path), Element(i)))
                        yield Element(i), row
                    return
                first = False
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as e:
                    raise PobenchError(f"{path}:{line}: bad JSON line ({e.msg}, column {e.colno})") from None
                except ValueError as e:   # an integer too long for Python to read (over 4300 digits)
                    raise PobenchError(f"{path}:{line}: bad JSON line ({_too_long(e)})") from None
                except RecursionError:
                    raise PobenchError(f"{path}:{line}: bad JSON line (nested too deeply)") from None
                if "\\u" in text:
                    _check_text(row, f"{path}:{line}")
                yield line, row
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        where = f" after line {line}" if line else ""
        raise PobenchError(f"{path}: unreadable gzip{where} ({e})") from None
    except OSError as e:
        raise PobenchError(f"{path}: cannot read ({e.strerror or e})") from None


def _dataset_rows(ds, name: str) -> Iterator[tuple[int, dict]]:
    for i, row in enumerate(ds, 1):
        yield i, row


def read_rows(path: str, split: str, hub_data_dir: str | None = None,
              legacy: bool = False) -> tuple[str, Iterator[tuple[int, dict]]]:
    """Resolve `path` (a local file, a local folder, or a hub id) to (source name, rows of `split`). `legacy`: a
    folder's files as split_files read them for a run made before records_rule 2 (pobench.data.RECORDS_RULE)."""
    p = Path(path).expanduser()
    if p.is_file():
        if p.name.endswith(JSON_SUFFIXES):
            return str(p), read_json_rows(p)
        if p.suffix not in (".parquet", ".arrow"):
            raise PobenchError(f"{p}: unknown data format (use jsonl, json, parquet, arrow or a save_to_disk folder)")
        if p.suffix == ".parquet" and _empty_parquet(p):
            return str(p), iter(())   # parse_rows says "no rows", as of an empty jsonl file
        import datasets
        read = datasets.Dataset.from_parquet if p.suffix == ".parquet" else datasets.Dataset.from_file
        try:
            with datasets_logs_quiet():
                ds = read(str(p))
        except Exception as e:
            raise PobenchError(f"{p}: cannot read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        return str(p), _dataset_rows(ds, str(p))
    if p.is_dir():
        if any((p / marker).exists() for marker in ("dataset_dict.json", "state.json", "dataset_info.json")):
            import datasets
            try:
                with datasets_logs_quiet():
                    ds = datasets.load_from_disk(str(p))
            except Exception as e:
                raise PobenchError(f"{p}: not a readable save_to_disk folder ({type(e).__name__})") from None
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise PobenchError(f"{p}: no split '{split}' (has {', '.join(ds)})")
                ds = ds[split]
            return f"{p}[{split}]", _dataset_rows(ds, str(p))
        files = split_files(p, split, legacy)
        if not files:
            raise PobenchError(f"{p}: no file for split '{split}' (expected {split}.jsonl, {split}.parquet, ... or "
                               f"shards {split}-00000-of-00002.parquet, ...)")
        if len(files) == 1:
            return read_rows(str(files[0]), split)

        def every_shard() -> Iterator[tuple[str, dict]]:   # rows named by shard and row: "train-00001-of-00002.parquet:5"
            for f in files:
                for i, row in read_rows(str(f), split)[1]:
                    yield (_ShardElement if isinstance(i, Element) else str)(f"{f.name}:{i}"), row
        return f"{p}[{split}]", every_shard()
    if path.startswith((".", "/", "~")) or path.endswith(JSON_SUFFIXES + (".parquet", ".arrow")):
        from pobench.paths import written_in
        raise PobenchError(f"{path}: no such file or folder{written_in(path)}")
    import datasets
    if not hub_offline() and not hub_reachable():   # (datasets would retry for ~30 s, logging each try)
        raise PobenchError(f"{path}: not a local file or folder, and the Hugging Face hub cannot be reached from "
                           f"here; give the data's local path (or set HF_DATASETS_OFFLINE=1 to read the hub cache)")
    try:
        with hub_logs_quiet():
            ds = datasets.load_dataset(path, data_dir=hub_data_dir, split=split)
    except Exception as e:
        raise PobenchError(f"{path}: cannot load from the hub ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return f"hub:{path}" + (f"/{hub_data_dir}" if hub_data_dir else "") + f"[{split}]", _dataset_rows(ds, path)


def source_has_split(path: str, split: str, hub_data_dir: str | None = None, legacy: bool = False) -> bool:
    """Whether `path` holds a separate `split`. A local file or a single-Dataset save_to_disk folder is one table
    with no splits; a DatasetDict folder has the splits it lists; a folder of files has the splits its file names
    start with; a hub dataset has the splits the hub lists for it (assumed, where the hub cannot say: reading the
    split then reports what is wrong)."""
    p = Path(path).expanduser()
    if p.is_file():
        return False
    if p.is_dir():
        splits = _folder_splits(p)
        if splits is _UNREADABLE:
            return True  # let read_rows report the folder
        return split in splits if splits is not None else bool(split_files(p, split, legacy))
    if path.startswith((".", "/", "~")):
        return True   # a missing local path: read_rows names it
    if not hub_reachable():
        return True   # assumed: reading the split reports the unreachable hub (or reads the offline cache)
    import datasets
    try:   # a sliced split (`test[:500]`) is there when its split is
        with hub_logs_quiet():
            return split.split("[")[0] in datasets.get_dataset_split_names(path, data_dir=hub_data_dir)
    except Exception:
        return True


def source_splits(path: str, hub_data_dir: str | None = None) -> list[str] | None:
    """The splits `path` holds, as source_has_split reads them: a DatasetDict folder's, a folder of split files'
    (shards named once: `train-00000-of-00002.parquet` is split train), the hub's where it can be asked; None for
    one table (a file, a single-Dataset folder) and where it cannot be told."""
    p = Path(path).expanduser()
    if p.is_file():
        return None
    if p.is_dir():
        splits = _folder_splits(p)
        if splits is _UNREADABLE:
            return None
        if splits is not None:
            return splits or None   # a single Dataset folder: one table
        # the files split_files would read as a split: train.jsonl, train-00000-of-00002.parquet (split train), not
        # dataset_infos.json, a README or a split's other files
        return list(dict.fromkeys(split for f in sorted(p.iterdir()) if f.is_file()
                                  for split in [_split_of(f.name)] if split))
    if path.startswith((".", "/", "~")) or not hub_reachable():
        return None
    import datasets
    try:
        with hub_logs_quiet():
            return list(datasets.get_dataset_split_names(path, data_dir=hub_data_dir))
    except Exception:
        return None


_UNREADABLE = object()
_SHARD = re.compile(r"-\d+-of-\d+$")


def _folder_splits(folder: Path):
    """A save_to_disk folder's splits: its DatasetDict's list, [] for a single Dataset (one table), _UNREADABLE for
    a dataset_dict.json that cannot be read; None for a folder of split files (split_files reads them)."""
    if (folder / "dataset_dict.json").exists():
        try:
            splits = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
            return [str(s) for s in splits] if isinstance(splits, list) else _UNREADABLE
        except (OSError, ValueError, KeyError, TypeError):
            return _UNREADABLE
    if any((folder / marker).exists() for marker in ("state.json", "dataset_info.json")):
        return []
    return None


def _split_stem(name: str) -> str | None:
    """A data file's name without its format's suffix (`train-00000-of-00002`), None for another file."""
    suffix = next((x for x in JSON_SUFFIXES + (".parquet", ".arrow") if name.endswith(x)), None)
    return name[:-len(suffix)] if suffix and not name.startswith(".") else None


def _split_of(name: str) -> str | None:
    """The split a folder's file holds as split_files reads it (`train-00000-of-00002.parquet`, `train.jsonl`:
    train), None for a file that is no split's data (dataset_infos.json, dataset_dict.json, state.json)."""
    stem = _split_stem(name)
    if stem is None or stem in NOT_SPLITS:
        return None
    return _SHARD.sub("", stem)


def split_files(folder: Path, split: str, legacy: bool = False) -> list[Path]:
    """The data files of `split` in a folder, in order: `<split>.<suffix>` or the hub's shards
    `<split>-00000-of-00002.<suffix>`, ... (not `train_prefs.*` for split `train`: another split). `legacy`: every
    such file, as read for runs made before records_rule 2 (a whole file beside shards, shards in two formats)."""
    found, by_stem = [], {}
    for f in sorted(folder.iterdir()):
        stem = _split_stem(f.name)
        if stem is not None and stem not in NOT_SPLITS and f.is_file():
            if stem == split or stem.startswith(split + "-"):
                if stem in by_stem:   # train.jsonl beside train.jsonl.gz: read as two shards, every record twice
                    raise PobenchError(f"{folder}: {by_stem[stem].name} and {f.name} hold the same part of split "
                                       f"'{split}' (one compressed copy of the other?); keep one")
                by_stem[stem] = f
                found.append(f)
    # each file was read as one shard of the split: a whole train.jsonl beside train-00000-of-00002.parquet (a
    # copy of the shards, or another version) trained on both, and shards in two formats are two exports mixed
    if legacy:
        return found
    whole = by_stem.get(split)
    shard = next((f for f in found if f is not whole), None)
    if whole and shard:
        raise PobenchError(f"{folder}: {whole.name} and {shard.name} both hold split '{split}' (a whole file beside "
                           f"shards); keep one")
    other = next((f for f in found if _format(f) != _format(found[0])), None)
    if other:
        raise PobenchError(f"{folder}: {found[0].name} and {other.name} are shards of split '{split}' in two "
                           f"formats; keep one")
    return found


def _format(path: Path) -> str:
    return "json" if path.name.endswith(JSON_SUFFIXES) else path.suffix


def detect_schema(row: dict) -> str:
    if "all_generated_responses" in row:
        return "ultrafeedback-onpolicy"
    if "completions" in row and "instruction" in row:
        return "ultrafeedback-raw"
    if isinstance(row.get("chosen"), str) and isinstance(row.get("rejected"), str):
        return "hh"
    if isinstance(row.get("chosen"), list) and isinstance(row.get("rejected"), list):
        return "ultrafeedback-binarized"
    raise PobenchError(f"unknown schema: keys {sorted(row)[:8]} match none of {', '.join(SCHEMAS)}")


def _other_schema(row: dict, schema: str) -> str:
    """The hint for a row that fails the schema it was read with but has another schema's keys (binarized rows read
    with the hh-rlhf suite's `schema: hh`): what to set instead, or ''."""
    try:
        detected = detect_schema(row)
    except PobenchError:
        return ""
    if detected == schema:
        return ""
    return f"; the row reads as {detected}: set data.schema to auto (or {detected})"


def record_parser(schema: str, raw_rejected: str = "worst", seed: int = 0) -> Callable[[dict, str], PreferenceRecord]:
    if schema == "hh":
        return hh.hh_record
    if schema == "ultrafeedback-binarized":
        return ultrafeedback.binarized_record
    if schema == "ultrafeedback-raw":
        if raw_rejected not in ("worst", "random"):
            raise PobenchError(f"data.raw_rejected: unknown value '{raw_rejected}' (choose worst or random)")
        return lambda row, rid: ultrafeedback.raw_record(row, rid, rejected=raw_rejected, seed=seed)
    if schema == "ultrafeedback-onpolicy":
        return ultrafeedback.onpolicy_record
    raise PobenchError(f"data.schema: unknown schema '{schema}' (choose auto or one of {', '.join(SCHEMAS)})")


def content_key(*parts) -> bytes:
    """What tells records apart, within a split (prompt and answers) and across splits (the prompt): the exact JSON
    of the chat messages and texts, as parsed (HH-RLHF turns are stripped of surrounding spaces)."""
    return hashlib.sha1(json.dumps(list(parts)).encode()).digest()


def parse_rows(source: str, rows: Iterator[tuple[int, dict]], schema: str = "auto",
               raw_rejected: str = "worst", seed: int = 0, limit: int = 0) -> LoadedSplit:
    """Parse rows into records. Schema defects (missing keys, wrong types) are errors naming the row;
    row-level defects that occur in upstream data (RowSkip) are skipped and counted, and so is a record whose
    id (UltraFeedback's prompt_id) repeats an earlier one, or whose prompt and answers repeat an earlier record's
    (HH-RLHF holds exact copies): the first is kept."""
    out = LoadedSplit(records=[], source=source)
    forced = schema != "auto"   # named by the suite or the user: a row of another schema fails in its parser
    parser = None
    seen_ids: set[str] = set()
    seen_content: set[bytes] = set()
    for i, row in rows:
        if limit and len(out.records) >= limit:
            break
        out.rows_read += 1
        if not isinstance(row, dict):
            raise PobenchError(f"{row_place(source, i)}: a row must be a JSON object, got {type(row).__name__}")
        if parser is None:
            if schema == "auto":
                try:
                    schema = detect_schema(row)
                except PobenchError as e:
                    raise PobenchError(f"{row_place(source, i)}: {e}") from None
            parser = record_parser(schema, raw_rejected, seed)
        try:
            record = parser(row, f"{Path(source).name}:{i}")
            if record.id in seen_ids:  # the same prompt twice would weigh double and could straddle the held-out cut
                raise RowSkip("duplicate_id")
            content = content_key(record.prompt, record.chosen, record.rejected)
            if content in seen_content:   # likewise: a copy could be trained on and held out
                raise RowSkip("duplicate_record")
            seen_ids.add(record.id)
            seen_content.add(content)
            out.records.append(record)
        except RowSkip as skip:
            out.skipped[skip.reason] += 1
        except KeyError as e:
            raise PobenchError(f"{row_place(source, i)}: missing key {e} for schema {schema}"
                               f"{_other_schema(row, schema) if forced else ''}") from None
        except (TypeError, AttributeError, IndexError, ValueError, OverflowError) as e:   # (a score too big for a float)
            raise PobenchError(f"{row_place(source, i)}: malformed row for schema {schema} ({type(e).__name__}: {e})"
                               f"{_other_schema(row, schema) if forced else ''}") from None
    if out.rows_read == 0:
        raise PobenchError(f"{source}: no rows")
    if not out.records:
        raise PobenchError(f"{source}: every row was skipped ({dict(out.skipped)})")
    return out
