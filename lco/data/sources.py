"""Data sources: read a table (local file or hub dataset) and return validated triplet records.

``TableSource.load()`` -> list of records (see ``records.py``). Local ``.jsonl``/``.json``, ``.parquet``
and ``.csv`` files are read directly (JSONL errors name the line); a hub id goes through ``datasets``.
"""

from __future__ import annotations

import json
from pathlib import Path

from lco.data.records import RecordError, detect_layout, to_record
from lco.hub import hub_reachable

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise RecordError(f"{path}, line {lineno + 1}: not valid JSON ({err.msg} at column {err.colno}); "
                                  "each line must be one JSON object.") from None
            if not isinstance(row, dict):
                raise RecordError(f"{path}, line {lineno + 1}: expected a JSON object, got {type(row).__name__}.")
            rows.append((lineno, row))
    return rows


def _read_table(path: Path) -> list[tuple[int, dict]]:
    import pandas as pd

    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, keep_default_na=False)
    return list(enumerate(frame.to_dict(orient="records")))


class TableSource:
    """A triplet table. ``path`` (local file) wins over ``hub_id``; ``columns`` maps
    ``{anchor, positive, negative}`` to other column names; ``limit`` keeps the first N rows."""

    def __init__(self, name: str, path: str | None = None, hub_id: str | None = None, hub_config: str | None = None,
                 split: str = "train", columns: dict | None = None, limit: int | None = None):
        if path is None and hub_id is None:
            raise ValueError(f"data source {name!r}: set data.source.path (a local file) or data.source.hub_id.")
        self.name, self.path, self.hub_id, self.hub_config, self.split = name, path, hub_id, hub_config, split
        self.columns = dict(columns) if columns else None
        self.limit = limit

    def describe(self) -> str:
        return self.path or f"{self.hub_id}[{self.hub_config or 'default'}:{self.split}]"

    def _rows(self) -> tuple[list[tuple[int, dict]], bool, Path | None]:
        if self.path is not None:
            path = Path(self.path).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"data.source.path={self.path!r} does not exist or is not a file.")
            if path.suffix not in LOCAL_SUFFIXES:
                raise RecordError(f"data.source.path={self.path!r}: unsupported file type {path.suffix!r}; "
                                  f"use one of {', '.join(LOCAL_SUFFIXES)}.")
            if path.suffix in (".jsonl", ".json"):
                return _read_jsonl(path), True, path.parent
            return _read_table(path), False, path.parent
        return self._hub_rows(), False, None

    def _hub_rows(self) -> list[tuple[int, dict]]:
        import datasets

        try:
            data = datasets.load_dataset(self.hub_id, self.hub_config, split=self.split,
                                         download_mode=None if hub_reachable() else "reuse_cache_if_exists")
        except Exception as err:  # noqa: BLE001 - re-raised with the config key to change
            raise RecordError(
                f"data source {self.name!r}: could not load hub dataset {self.hub_id!r} "
                f"(config {self.hub_config!r}, split {self.split!r}): {type(err).__name__}: {str(err)[:200]}. "
                f"Offline, download it once elsewhere or set data.source.path=/path/to/file.jsonl|parquet|csv."
            ) from None
        return list(enumerate(data.to_list() if self.limit is None else data.select(range(min(self.limit, len(data)))).to_list()))

    def load(self) -> list[dict]:
        rows, line_based, root = self._rows()
        if self.limit is not None:
            rows = rows[: self.limit]
        if not rows:
            raise RecordError(f"data source {self.name!r} ({self.describe()}) has no rows.")
        if self.columns:
            columns = (self.columns["anchor"], self.columns["positive"], self.columns.get("negative"))
        else:
            columns = detect_layout(rows[0][1].keys(), self.describe())
        return [to_record(row, columns, self.describe(), i, line_based, root) for i, row in rows]
