"""Read an offline W&B run (``<save_dir>/wandb/offline-run-*/run-<id>.wandb``) back from disk, as ``wandb sync``
would send it: no network, no W&B account.

wandb >= 0.2x writes the file from its Go core and ships no Python reader, so this walks the file's record log
(the LevelDB log layout wandb documents for its transaction log: a 7-byte ``:W&B`` header, 32 KiB blocks, records
of ``crc32, length, type`` + data, split FIRST/MIDDLE/LAST across blocks) and parses every record with wandb's own
protobuf class ``wandb.proto.wandb_internal_pb2.Record``.

``read_run(folder)`` -> ``{"run": {"id", "project", "group", "job_type", "name", "tags"}, "config": {...},
"summary": {...}, "history": [{...}, ...], "exit_code": int | None}``; config and summary are the merged updates.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path

HEADER, BLOCK = 7, 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B transaction log"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the rest of a block too short for a header is padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + HEADER:pos + HEADER + length]
        assert zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF == crc, f"{path}: bad checksum at byte {pos}"
        pos += HEADER + length
        if kind == FULL:
            body = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        else:
            body, pending = pending + chunk, b""
        record = pb.Record()
        record.ParseFromString(body)
        yield record


def _items(items) -> dict:
    out = {}
    for item in items:
        keys = list(item.nested_key) or [item.key]
        node = out
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = json.loads(item.value_json)
    return out


def _merge(into: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def read_run(folder: str | Path, wait: float = 60.0) -> dict:
    """Everything one offline run folder (``offline-run-<time>-<id>``) holds, merged in the order written.

    ``run.finish()`` returns once wandb's core process has the run's exit, not once it has written its log to disk:
    on a loaded machine the last records land a moment later, so this waits (up to ``wait`` seconds) for the log to
    end in its exit record."""
    (log,) = Path(folder).glob("run-*.wandb")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            if any(r.WhichOneof("record_type") == "exit" for r in records(log)):
                break
        except (AssertionError, struct.error):  # caught mid-write
            pass
        time.sleep(0.2)
    result = {"run": {}, "config": {}, "summary": {}, "history": [], "exit_code": None}
    for record in records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            result["run"] = {"id": run.run_id, "project": run.project, "group": run.run_group,
                             "job_type": run.job_type, "name": run.display_name, "tags": list(run.tags)}
            _merge(result["config"], _items(run.config.update))
            _merge(result["summary"], _items(run.summary.update))
        elif kind == "config":
            _merge(result["config"], _items(record.config.update))
        elif kind == "summary":
            _merge(result["summary"], _items(record.summary.update))
        elif kind == "history":
            result["history"].append(_items(record.history.item))
        elif kind == "exit":
            result["exit_code"] = record.exit.exit_code
    for key in ("_wandb",):
        result["config"].pop(key, None)
    return result
