"""Read an offline W&B run (``run-<id>.wandb``) back from disk, as `wandb sync` would.

The file is a LevelDB-style log: a 7-byte header (":W&B", magic 0xBEE1, version), then 32 KiB
blocks of records, each with a 7-byte header (crc32, length, type) and a protobuf ``Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> list[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, out, pending = 7, [], b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # the rest of a block too small for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            out.append(payload)
        elif kind == FIRST:
            pending = payload
        elif kind == MIDDLE:
            pending += payload
        elif kind == LAST:
            out.append(pending + payload)
    parsed = []
    for raw in out:
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(raw)
        parsed.append(rec)
    return parsed


def history(path: str | Path) -> dict[int, dict[str, object]]:
    """step -> {metric: value} for every history record."""
    rows: dict[int, dict[str, object]] = {}
    for rec in records(path):
        if rec.WhichOneof("record_type") == "history":
            row = {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in rec.history.item}
            rows.setdefault(int(row.get("_step", rec.history.step.num)), {}).update(row)
    return rows


def config(path: str | Path) -> dict[str, object]:
    """The run config as logged (top-level keys -> values)."""
    out: dict[str, object] = {}
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        items = rec.run.config.update if kind == "run" else rec.config.update if kind == "config" else []
        for item in items:
            value = json.loads(item.value_json)
            out[item.key or "/".join(item.nested_key)] = value.get("value", value) if isinstance(value, dict) else value
    return out


def run_info(path: str | Path) -> dict[str, object]:
    """Project, name, group, tags and notes of the run, as given to wandb.init."""
    for rec in records(path):
        if rec.WhichOneof("record_type") == "run":
            r = rec.run
            return {"project": r.project, "name": r.display_name, "group": r.run_group, "tags": list(r.tags),
                    "notes": r.notes}  # fmt: skip
    raise AssertionError(f"no run record in {path}")


def run_id(path: str | Path) -> str:
    for rec in records(path):
        if rec.WhichOneof("record_type") == "run":
            return rec.run.run_id
    raise AssertionError(f"no run record in {path}")


def _flat_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def summary(path: str | Path) -> dict[str, object]:
    """The run summary as it stands at the end of the file (later updates win)."""
    out: dict[str, object] = {}
    for rec in records(path):
        if rec.WhichOneof("record_type") == "summary":
            for item in rec.summary.update:
                out[_flat_key(item)] = json.loads(item.value_json)
    return out


def metric_definitions(path: str | Path) -> dict[str, str]:
    """define_metric calls: metric name (or glob) -> its step metric ('' when none)."""
    out = {}
    for rec in records(path):
        if rec.WhichOneof("record_type") == "metric":
            out[rec.metric.name or rec.metric.glob_name] = rec.metric.step_metric
    return out


def tables(path: str | Path, key: str) -> dict[int, dict[str, object]]:
    """step -> the table logged under ``key`` at that step ({"columns": [...], "data": [[...], ...]}).

    A logged table is a JSON file under the run's files/ folder; its history row holds the path."""
    files = Path(path).parent / "files"
    out = {}
    for step, row in history(path).items():
        if row.get(f"{key}/_type") == "table-file":
            out[step] = json.loads((files / str(row[f"{key}/path"])).read_text())
    return out


def artifacts(path: str | Path) -> list[dict[str, object]]:
    """Logged artifacts: type, name, aliases and the paths of the files in them."""
    out = []
    for rec in records(path):
        if rec.WhichOneof("record_type") == "artifact":
            a = rec.artifact
            files = sorted(entry.path for entry in a.manifest.contents)
            out.append({"type": a.type, "name": a.name, "aliases": list(a.aliases), "files": files})
    return out
