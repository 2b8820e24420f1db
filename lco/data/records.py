"""The triplet record schema, its validation, and what happens to bad rows.

A record is ``{"anchor": item, "positive": item, "negatives": [item, ...], "origin": "file, line N"}``, plus
``"positives": [item, ...]`` when a row gives several positives (a list in its positive column, or a ``positives``
column; ``positive`` is then the first, and training draws one per pass: ``lco.data.mixture.pick_positive``);
an item is a dict with any of ``text`` (str), ``image``, ``audio``, ``video`` (a path resolved against the
data file's folder, a URL, bytes, or a ``{"bytes", "path"}`` dict). Rows in any accepted layout normalise to it:

- flat columns ``anchor`` / ``positive`` / ``negative`` (or a ``negatives`` list), strings or items;
- SimCSE NLI columns ``sent0`` / ``sent1`` / ``hard_neg``;
- the reference JSONL: nested ``{"text", "image_path"}`` items (also ``audio_path``, ``video_path``), with
  empty strings where absent.

Every problem raises ``RecordError`` naming the source, the row (line for JSONL) and what to fix;
``ErrorPolicy`` turns that into raise (default) or skip-and-count.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from lco.data.media import check_media
from lco.errors import ConfigError, MediaError, RecordError

MEDIA = ("image", "audio", "video")
LAYOUTS = (("anchor", "positive", "negative"), ("anchor", "positive", "negatives"), ("anchor", "positives", "negative"),
           ("anchor", "positives", "negatives"), ("sent0", "sent1", "hard_neg"))
log = logging.getLogger(__name__)


def detect_layout(columns, source: str) -> tuple[str, str, str | None]:
    """The (anchor, positive, negative-or-None) column names of a table; raises if none of the layouts fits."""
    columns = set(columns)
    if {"positive", "positives"} <= columns:
        raise RecordError(f"{source}: has both a 'positive' and a 'positives' column; keep one (a list of items in "
                          "either gives several positives per row).")
    for anchor, positive, negative in LAYOUTS:
        if {anchor, positive, negative} <= columns:
            return anchor, positive, negative
    for anchor, positive, _ in LAYOUTS:
        if {anchor, positive} <= columns:
            return anchor, positive, None
    raise RecordError(
        f"{source}: columns {sorted(columns)} match no known layout. Use anchor/positive(s)[/negative or negatives] "
        "(sentence-transformers, or the reference JSONL with {text, image_path} items) or sent0/sent1[/hard_neg] "
        "(SimCSE NLI); rename columns or map yours with data.sources.<name>.columns."
    )


def _media_value(value: dict, kind: str):
    return value.get(f"{kind}_path") or value.get(kind) or None


@dataclass(frozen=True)
class MediaRoot:
    """Where a source's media paths may point. Relative paths are joined to ``folder`` (the data file's folder, or
    the source's ``media_root``); the result, like an absolute path, must stay inside ``folder`` unless
    ``allow_outside``. The check is lexical (``..`` and absolute paths), so symlinks the user placed inside the
    folder are followed. ``folder=None`` (a hub dataset without ``media_root``): no local path is allowed.
    ``key``: the config prefix errors name (``data.sources.<name>``)."""

    folder: Path | None
    allow_outside: bool = False
    key: str = "data.sources.<name>"

    def resolve(self, media: str, where: str, field: str) -> str:
        if media.startswith(("http://", "https://")):
            return media
        path = Path(media)
        if not path.is_absolute() and self.folder is not None:
            path = self.folder / path
        path = Path(os.path.normpath(path))
        if self.allow_outside:
            return str(path)
        inside = self.folder is not None and path.is_absolute() and path.is_relative_to(
            os.path.normpath(self.folder.absolute()))
        if not inside:
            root = f"the data root {self.folder}" if self.folder is not None else "no local data root (a hub dataset)"
            raise RecordError(
                f"{where}: field {field!r} names the file {media!r}, which resolves to {path}, outside {root}. Paths "
                f"in data files may not leave it. Move the files under it, set {self.key}.media_root=<a folder "
                f"holding them>, or set {self.key}.allow_outside_root=true if you trust this data file.")
        return str(path)


def _confined(media, root: MediaRoot, where: str, field: str):
    """``media`` with every local path in it (a path, a list of frame paths, a ``{"path"}`` dict without bytes)
    resolved by ``root``; decoded objects, bytes and decoded audio (``{"path", "array", "sampling_rate"}``, whose
    path is only a name) pass unchanged."""
    if isinstance(media, str):
        return root.resolve(media, where, field)
    if isinstance(media, list):
        return [_confined(m, root, where, field) for m in media]
    if isinstance(media, dict) and media.get("path") and not media.get("bytes") and "array" not in media:
        return {**media, "path": root.resolve(str(media["path"]), where, field)}
    return media


def to_item(value, field: str, where: str, root: MediaRoot | None, check: str = "decode") -> dict:
    """One cell -> item dict. Strings are text; dicts follow the reference ``{text, <medium>_path}`` schema."""
    if isinstance(value, str):
        item = {"text": value}
    elif isinstance(value, dict):
        allowed = {"text"} | set(MEDIA) | {f"{m}_path" for m in MEDIA}
        unknown = set(value) - allowed
        if unknown:
            raise RecordError(f"{where}: field {field!r} has unknown keys {sorted(unknown)}; an item has "
                              f"{', '.join(sorted(allowed))}.")
        text = value.get("text") or ""
        if not isinstance(text, str):
            raise RecordError(f"{where}: field {field!r}.text is {type(text).__name__}, expected a string.")
        item = {"text": text}
        for kind in MEDIA:
            media = _media_value(value, kind)
            if media is None:
                continue
            if root is not None:
                media = _confined(media, root, where, field)
            try:
                check_media(kind, media, check)
            except MediaError as err:
                raise RecordError(f"{where}: field {field!r}: {err}. Fix the path or file, or set "
                                  "data.on_error=skip to drop such rows.") from None
            item[kind] = media
    else:
        raise RecordError(f"{where}: field {field!r} is {type(value).__name__}, expected a string or an "
                          "object with 'text'/'image_path'/'audio_path'/'video_path'.")
    if not item["text"].strip() and not any(k in item for k in MEDIA):
        raise RecordError(f"{where}: field {field!r} is empty (no text and no media); fix or drop the row.")
    if not item["text"].strip():
        del item["text"]
    return item


def _absent(value) -> bool:
    return value is None or value == "" or value == [] or (
        isinstance(value, dict) and not any(v for v in value.values()))


def to_record(row: dict, columns: tuple[str, str, str | None], where: str, root: MediaRoot | None = None,
              check: str = "decode") -> dict:
    """Normalise one table row to a triplet record (see module docstring). ``where``: "file, line N"."""
    anchor, positive, negative = columns
    for name in (anchor, positive):
        if row.get(name) is None:
            raise RecordError(f"{where}: missing field {name!r}; every row needs {anchor!r} and {positive!r}.")
    positives = row[positive] if isinstance(row[positive], list) else [row[positive]]
    if not positives:
        raise RecordError(f"{where}: field {positive!r} is an empty list; give at least one positive.")
    positives = [to_item(value, positive, where, root, check) for value in positives]
    record = {"anchor": to_item(row[anchor], anchor, where, root, check), "positive": positives[0], "negatives": [],
              "origin": where}
    if len(positives) > 1:
        record["positives"] = positives
    if negative is not None:
        value = row.get(negative)
        if _absent(value):
            raise RecordError(f"{where}: field {negative!r} is missing or empty while this source has that column; "
                              "every row of a source needs the same number of negatives.")
        values = value if isinstance(value, list) else [value]
        record["negatives"] = [to_item(v, negative, where, root, check) for v in values]
    return record


class ErrorPolicy:
    """``on_error="raise"`` re-raises the first ``RecordError``; ``"skip"`` counts and drops bad rows, keeps
    the first messages, and ``finish()`` fails when more than ``max_skip_fraction`` of the rows were bad."""

    def __init__(self, on_error: str = "raise", max_skip_fraction: float = 0.01, source: str = ""):
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"data.on_error={on_error!r}: use 'raise' or 'skip'.")
        self.on_error, self.max_skip_fraction, self.source = on_error, max_skip_fraction, source
        self.seen = self.skipped = 0
        self.examples: list[str] = []

    def convert(self, row: dict | RecordError, columns, where: str, root: MediaRoot | None,
                check: str) -> dict | None:
        """The record of ``row``, or None when it is bad and skipped. ``row`` may be a reader's error."""
        self.seen += 1
        try:
            if isinstance(row, RecordError):
                raise row
            return to_record(row, columns, where, root, check)
        except RecordError as err:
            return self.reject(err)

    def reject(self, err: RecordError) -> None:
        """Raise ``err`` or count its (already seen) row as skipped."""
        if self.on_error == "raise":
            raise err
        self.skipped += 1
        if len(self.examples) < 5:
            self.examples.append(str(err))
        return None

    def finish(self) -> None:
        if not self.skipped:
            return
        fraction = self.skipped / max(self.seen, 1)
        summary = (f"{self.source}: skipped {self.skipped} of {self.seen} rows ({fraction:.2%}); first problems:\n  "
                   + "\n  ".join(self.examples))
        if fraction > self.max_skip_fraction:
            raise RecordError(f"{summary}\nThat is more than data.max_skip_fraction={self.max_skip_fraction}; "
                              "fix the data or raise the limit.")
        log.warning(summary)
