"""Data sources: read a table (local file or hub dataset) and produce validated triplet records.

``TableSource`` reads ``.jsonl``/``.json``, ``.parquet`` and ``.csv`` files (JSONL errors name the line; text
files are UTF-8, with or without a byte-order mark, and a line that is not UTF-8 is a row error)
or a hub dataset through ``datasets``. ``streaming=True`` never holds the table in memory: records are
produced one at a time by ``stream()``, each validated as it is read. ``load()`` returns a list.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from lco.data.records import ErrorPolicy, MediaRoot, detect_layout
from lco.errors import RecordError
from lco.hub import hub_reachable

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


BOM = b"\xef\xbb\xbf"


def _decoded_lines(path: Path) -> Iterator[tuple[int, str | RecordError]]:
    """(line number, text) of each line, decoded as UTF-8 one line at a time: a byte-order mark at the start (as
    Windows editors and some exporters write) is dropped, CRLF ends are fine, and a line that is not UTF-8 comes
    as a ``RecordError`` naming the line and byte, so ``data.on_error=skip`` can drop it like any bad row."""
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if lineno == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield lineno, RecordError(
                    f"{path}, line {lineno}: not UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                    "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8), or set data.on_error=skip to drop "
                    "such lines.")


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict | RecordError]]:
    """(where, row) per non-empty line; a line that is not a JSON object (or not UTF-8) comes as a
    ``RecordError`` value so that ``data.on_error`` decides."""
    for lineno, line in _decoded_lines(path):
        where = f"{path}, line {lineno}"
        if isinstance(line, RecordError):
            yield where, line
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            row = RecordError(f"{where}: not valid JSON ({err.msg} at column {err.colno}); "
                              "each line must be one JSON object.")
        if not isinstance(row, (dict, RecordError)):
            row = RecordError(f"{where}: expected a JSON object, got {type(row).__name__}.")
        yield where, row


def _table_rows(path: Path) -> Iterator[tuple[str, dict]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        index = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                yield f"{path}, row {index}", row
                index += 1
    else:
        import io

        import pandas as pd

        # a CSV is read by pandas in chunks (a BOM is fine: utf-8-sig); lines that are not UTF-8 are found first
        # and come as row errors naming the line, and the rest is read without them
        bad = [(n, line) for n, line in _decoded_lines(path) if isinstance(line, RecordError)]
        source = path
        if bad:
            yield from ((f"{path}, line {n}", err) for n, err in bad)
            source = io.StringIO("".join(line for _, line in _decoded_lines(path) if isinstance(line, str)))
        index = 0
        for chunk in pd.read_csv(source, keep_default_na=False, chunksize=4096, encoding="utf-8-sig"):
            for row in chunk.to_dict(orient="records"):
                yield f"{path}, row {index}", row
                index += 1


class TableSource:
    """A triplet table. ``path`` (local file) wins over ``hub_id``. ``columns`` maps ``{anchor, positive,
    negative}`` to other column names; ``limit`` keeps the first N rows; ``check_media`` is ``decode`` (open
    every media file's header while reading), ``exists`` or ``none``. Media paths in the rows must stay inside
    the data root: ``media_root`` if set, else the data file's folder (a hub dataset has none); a row naming a
    file outside fails, naming the line, unless ``allow_outside_root`` (see ``records.MediaRoot``)."""

    def __init__(self, name: str = "table", path: str | None = None, hub_id: str | None = None, hub_config: str | None = None,
                 split: str = "train", columns: dict | None = None, limit: int | None = None,
                 streaming: bool = False, check_media: str = "decode", num_rows: int | None = None,
                 media_root: str | None = None, allow_outside_root: bool = False):
        self.name, self.path, self.hub_id, self.hub_config, self.split = name, path, hub_id, hub_config, split
        self.columns = dict(columns) if columns else None
        self.limit, self.streaming, self.check_media, self._num_rows = limit, streaming, check_media, num_rows
        self.media_root, self.allow_outside_root = media_root, allow_outside_root

    def describe(self) -> str:
        return self.path or f"{self.hub_id}[{self.hub_config or 'default'}:{self.split}]"

    def _local_path(self) -> Path:
        path = Path(self.path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"data.sources.{self.name}.path={self.path!r} does not exist or is not a file.")
        if path.suffix not in LOCAL_SUFFIXES:
            raise RecordError(f"data.sources.{self.name}.path={self.path!r}: unsupported file type "
                              f"{path.suffix!r}; use one of {', '.join(LOCAL_SUFFIXES)}.")
        return path

    def _hub_dataset(self):
        import datasets

        try:
            return datasets.load_dataset(self.hub_id, self.hub_config, split=self.split, streaming=self.streaming,
                                         download_mode=None if hub_reachable() else "reuse_cache_if_exists")
        except Exception as err:  # noqa: BLE001 - re-raised with the config key to change
            raise RecordError(
                f"data source {self.name!r}: could not load hub dataset {self.hub_id!r} (config "
                f"{self.hub_config!r}, split {self.split!r}): {type(err).__name__}: {str(err)[:200]}. Offline, "
                f"download it once elsewhere or set data.sources.{self.name}.path=/path/to/file.jsonl|parquet|csv."
            ) from None

    def _root(self, data_file: Path | None) -> MediaRoot:
        folder = Path(self.media_root).expanduser() if self.media_root else data_file.parent if data_file else None
        return MediaRoot(folder.absolute() if folder else None, self.allow_outside_root, f"data.sources.{self.name}")

    def _rows(self) -> tuple[Iterator[tuple[str, dict]], MediaRoot]:
        if self.path is None and self.hub_id is None:
            raise RecordError(f"data source {self.name!r} has no data: set data.sources.{self.name}.path=/path/to/"
                              f"file (.jsonl/.json/.parquet/.csv) or data.sources.{self.name}.hub_id=<dataset id>.")
        if self.path is not None:
            path = self._local_path()
            return (_jsonl_rows(path) if path.suffix in (".jsonl", ".json") else _table_rows(path)), self._root(path)
        data = self._hub_dataset()
        return ((f"{self.describe()}, row {i}", row) for i, row in enumerate(data)), self._root(None)

    @property
    def num_rows(self) -> int | None:
        """Rows in the table when known without reading it (hub metadata or ``num_rows``), else None."""
        if self._num_rows is not None or self.path is not None:
            return self._num_rows if self.limit is None else min(self._num_rows or self.limit, self.limit)
        info = self._hub_dataset().info.splits
        rows = info[self.split].num_examples if info and self.split in info else None
        return rows if self.limit is None or rows is None else min(rows, self.limit)

    def stream(self, policy: ErrorPolicy | None = None) -> Iterator[dict]:
        """Validated records one at a time, in table order."""
        policy = policy or ErrorPolicy(source=self.describe())
        rows, root = self._rows()
        columns, negatives = None, None
        for count, (where, row) in enumerate(rows):
            if self.limit is not None and count >= self.limit:
                break
            if columns is None and isinstance(row, dict):
                columns = self._columns(row)
            record = policy.convert(row, columns, where, root, self.check_media)
            if record is None:
                continue
            negatives = len(record["negatives"]) if negatives is None else negatives
            if len(record["negatives"]) != negatives:  # a batch needs one count: fail now, not mid-training
                policy.reject(RecordError(f"{where}: {len(record['negatives'])} negatives where earlier rows have "
                                          f"{negatives}; every row of a source needs the same number."))
                continue
            yield record
        if policy.seen == 0 or policy.seen == policy.skipped:
            raise RecordError(f"data source {self.name!r} ({self.describe()}) has no usable rows.")
        policy.finish()

    def load(self, policy: ErrorPolicy | None = None) -> list[dict]:
        return list(self.stream(policy))

    def _columns(self, row: dict) -> tuple[str, str, str | None]:
        if self.columns:
            return self.columns["anchor"], self.columns["positive"], self.columns.get("negative")
        return detect_layout(row.keys(), self.describe())
