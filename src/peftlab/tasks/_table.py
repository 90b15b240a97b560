"""A user's data file read as rows through HF ``datasets``: CSV, TSV, JSON (a list, or one object a line),
JSON Lines, Parquet, a ``save_to_disk`` folder, or a hub dataset name (``owner/name``, ``owner/name:split``;
read only where the network allows). Every problem is a :class:`~peftlab.tasks.base.TaskError` naming the
file (and the row, see :meth:`Table.where`) and the fix."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftlab.core.errors import few
from peftlab.tasks.base import TaskError

# suffix -> (the datasets builder, its options)
FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    ".csv": ("csv", {}), ".tsv": ("csv", {"delimiter": "\t"}), ".json": ("json", {}), ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
SAVED_FOLDER_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass
class Table:
    source: str  # the file, folder or hub name as given
    flag: str  # the flag (or suite key) that named it, for messages
    rows: list[dict[str, Any]]
    columns: list[str]
    features: Any  # datasets.Features: each column's type (a float label column means regression)

    def where(self, index: int) -> str:
        """Row ``index`` (from 0) as the user finds it: a text file's line, else its row counting from 1."""
        suffix = Path(self.source).suffix.lower()
        if suffix in (".csv", ".tsv"):
            return f"{self.source} line {index + 2}"  # after the header
        if suffix == ".jsonl":
            return f"{self.source} line {index + 1}"
        return f"{self.source} row {index + 1}"

    def column(self, name: str, setting: str, default: bool = False) -> str:
        """``name`` checked against the file's columns; ``setting`` is the flag that chose it (or whose
        ``default`` it is)."""
        if name not in self.columns:
            chosen = f"{setting}'s default" if default else f"from {setting}"
            raise TaskError(f"{self.source} has no column {name!r} ({chosen}); its columns: "
                            f"{few(self.columns, 20)}; pass {setting} with one of them")
        return name

    def dtype(self, name: str) -> str:
        """The column's value type as ``datasets`` read it: string, int64, float64, bool, class_label, ..."""
        feature = self.features[name]
        return "class_label" if hasattr(feature, "names") and hasattr(feature, "str2int") else \
            str(getattr(feature, "dtype", type(feature).__name__))


def is_empty(value: Any) -> bool:
    """A missing cell: None (JSON null, an empty CSV cell), NaN (an empty cell in a number column) or blank text."""
    if isinstance(value, float):
        return math.isnan(value)
    return value is None or (isinstance(value, str) and not value.strip())


def read_table(source: str, flag: str) -> Table:
    """The rows of ``source`` (see the module docstring); ``flag`` names where it was given."""
    try:
        import datasets
    except ImportError:
        raise TaskError(f"{flag} {source}: reading your own data needs `datasets`: pip install 'peftlab[train]'") from None
    quiet = not datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a bar per small file says nothing; the rows' count is in the run's log
    try:
        return _read(datasets, source, flag)
    finally:
        if not quiet:
            datasets.enable_progress_bars()


def _read(datasets: Any, source: str, flag: str) -> Table:
    path = Path(source)
    if path.is_dir():
        loaded = _saved_folder(datasets, path, flag)
    elif path.suffix.lower() in FORMATS:
        if not path.is_file():
            raise TaskError(f"{flag} {source}: no such file; give a CSV, TSV, JSON, JSONL or Parquet file, a "
                            f"`datasets` save_to_disk folder, or a hub dataset name")
        builder, options = FORMATS[path.suffix.lower()]
        try:
            loaded = datasets.load_dataset(builder, data_files=str(path), split="train", **options)
        except Exception as error:  # noqa: BLE001  (a malformed file: pandas, pyarrow and json raise their own)
            raise TaskError(f"{source} cannot be read as {path.suffix[1:].upper()} "
                            f"({_root_cause(error)}); fix the file (one header line, the same columns on "
                            f"every row)") from None
    elif path.exists():
        raise TaskError(f"{flag} {source}: unknown file type {path.suffix!r}; use one of "
                        f"{', '.join(FORMATS)}, or a `datasets` save_to_disk folder")
    else:
        loaded = _hub(datasets, source, flag)
    if len(loaded) == 0:
        raise TaskError(f"{source} has no rows")
    return Table(source, flag, loaded.to_list(), list(loaded.column_names), loaded.features)


def _saved_folder(datasets: Any, path: Path, flag: str) -> Any:
    if not any((path / name).is_file() for name in SAVED_FOLDER_FILES):
        raise TaskError(f"{flag} {path}: a folder, but not one written by `datasets` save_to_disk (no "
                        f"{' or '.join(SAVED_FOLDER_FILES)}); give a data file or such a folder")
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:  # noqa: BLE001
        raise TaskError(f"{flag} {path}: the saved dataset cannot be read ({_root_cause(error)})") from None
    if isinstance(loaded, datasets.DatasetDict):
        raise TaskError(f"{flag} {path} holds the splits {', '.join(loaded)}; give one of them: "
                        f"{path / next(iter(loaded))}")
    return loaded


def _hub(datasets: Any, source: str, flag: str) -> Any:
    name, _, split = source.partition(":")
    try:
        return datasets.load_dataset(name, split=split or "train")
    except Exception as error:  # noqa: BLE001  (offline, unknown name or split: no data either way)
        raise TaskError(f"{flag} {source}: no such local file or folder, and the HuggingFace hub could not read it "
                        f"as a dataset ({_root_cause(error)}); give a local file ({', '.join(FORMATS)}), a "
                        f"save_to_disk folder, or a hub name (owner/name or owner/name:split) with network "
                        f"access") from None


def _root_cause(error: BaseException) -> str:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__
