"""The triplet record schema and its validation.

A record is ``{"anchor": item, "positive": item, "negatives": [item, ...]}``; an item is a dict with any of
``text`` (str), ``image`` (path). Rows in any of the accepted layouts are normalised to it:

- flat columns ``anchor`` / ``positive`` / ``negative`` (sentence-transformers all-nli), strings;
- SimCSE NLI columns ``sent0`` / ``sent1`` / ``hard_neg``;
- the reference JSONL: nested ``{"text": ..., "image_path": ...}`` items, empty strings where absent.

Every problem raises ``RecordError`` naming the source, the row (line for JSONL) and what to fix.
"""

from __future__ import annotations

from pathlib import Path

LAYOUTS = {
    "anchor/positive/negative": ("anchor", "positive", "negative"),
    "sent0/sent1/hard_neg": ("sent0", "sent1", "hard_neg"),
}


class RecordError(ValueError):
    """A data row that cannot be used as a training triplet."""


def _where(source: str, row: int, line_based: bool) -> str:
    return f"{source}, {'line' if line_based else 'row'} {row + 1 if line_based else row}"


def detect_layout(columns, source: str) -> tuple[str, str, str | None]:
    """The (anchor, positive, negative-or-None) column names of a table; raises if none of the layouts fits."""
    columns = set(columns)
    for anchor, positive, negative in LAYOUTS.values():
        if {anchor, positive} <= columns:
            return anchor, positive, negative if negative in columns else None
    raise RecordError(
        f"{source}: columns {sorted(columns)} match no known layout. Use anchor/positive[/negative] "
        "(sentence-transformers, or the reference JSONL with {text, image_path} items) or sent0/sent1[/hard_neg] "
        "(SimCSE NLI); rename columns or set data.columns to map yours."
    )


def to_item(value, field: str, where: str, root: Path | None) -> dict:
    """One cell -> item dict. Strings are text; dicts follow the reference ``{text, image_path}`` schema."""
    if isinstance(value, str):
        item = {"text": value}
    elif isinstance(value, dict):
        unknown = set(value) - {"text", "image_path", "image"}
        if unknown:
            raise RecordError(f"{where}: field {field!r} has unknown keys {sorted(unknown)}; "
                              "an item has 'text' and/or 'image_path'.")
        item = {"text": value.get("text") or ""}
        image = value.get("image_path") or value.get("image") or ""
        if not isinstance(item["text"], str) or not isinstance(image, str):
            raise RecordError(f"{where}: field {field!r} needs string 'text' and 'image_path' values.")
        if image:
            item["image"] = str(root / image) if root is not None and not Path(image).is_absolute() else image
    else:
        raise RecordError(f"{where}: field {field!r} is {type(value).__name__}, expected a string or an "
                          "object with 'text'/'image_path'.")
    if not item["text"].strip() and not item.get("image"):
        raise RecordError(f"{where}: field {field!r} is empty (no text and no image); fix or drop the row.")
    return item


def to_record(row: dict, columns: tuple[str, str, str | None], source: str, index: int,
              line_based: bool = False, root: Path | None = None) -> dict:
    """Normalise one table row to a triplet record (see module docstring)."""
    where = _where(source, index, line_based)
    anchor, positive, negative = columns
    for name in (anchor, positive):
        if row.get(name) is None:
            raise RecordError(f"{where}: missing field {name!r}; every row needs {anchor!r} and {positive!r}.")
    record = {"anchor": to_item(row[anchor], anchor, where, root),
              "positive": to_item(row[positive], positive, where, root), "negatives": []}
    if negative is not None:
        value = row.get(negative)
        if value is None or value == "" or value == {"text": "", "image_path": ""}:
            raise RecordError(f"{where}: field {negative!r} is missing or empty while other rows have one; "
                              "every row of a source needs the same number of negatives.")
        values = value if isinstance(value, list) else [value]
        record["negatives"] = [to_item(v, negative, where, root) for v in values]
    return record
