"""Reading a wandb offline run back (RUN/wandb/offline-run-*/run-*.wandb) for the tests.

wandb (>= 0.19) ships no Python reader for its transaction log, so this is one: the file is a
7-byte header (":W&B", magic 0xBEE1, version) then LevelDB log blocks of 32 KiB, each record a
7-byte header (crc32c, little-endian length, type: 1 full, 2 first, 3 middle, 4 last) and its
bytes; a record is one wandb_internal_pb2.Record, decoded with wandb's own protobuf classes."""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def _payloads(data: bytes):
    pos, parts = HEADER, []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a header is zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:
            break  # preallocated zeros: the end of what was written
        body = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            yield body
        elif kind == 2:
            parts = [body]
        elif kind == 3:
            parts.append(body)
        elif kind == 4:
            parts.append(body)
            yield b"".join(parts)
            parts = []


def history(run_file: Path) -> dict[int, dict]:
    """step -> {key: value} of every history row the run logged (values JSON-decoded)."""
    from wandb.proto import wandb_internal_pb2

    data = Path(run_file).read_bytes()
    assert data[:4] == b":W&B", f"{run_file} is not a wandb transaction log"
    rows: dict[int, dict] = {}
    for payload in _payloads(data):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(payload)
        if rec.WhichOneof("record_type") != "history":
            continue
        items = {}
        for item in rec.history.item:
            key = item.key or "/".join(item.nested_key)
            items[key] = json.loads(item.value_json)
        step = int(items.get("_step", rec.history.step.num))
        rows.setdefault(step, {}).update(items)
    return rows


def run_file(run_dir: Path) -> Path:
    """The one offline run's transaction log under run_dir/wandb."""
    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    return files[0]
