"""Read an offline W&B run file (``run-<id>.wandb``): its records, as protobuf messages.

The file is W&B's 7-byte header (``:W&B``, magic ``0xBEE1``, version 0) followed by a
LevelDB-style log: 32 KiB blocks of chunks, each ``crc32c (4) | length (2, LE) | type (1) |
data``, type 1 a whole record, 2/3/4 its first/middle/last part; a block's last < 7 bytes are
padding.  Each record is a ``wandb_internal_pb2.Record``.  (wandb 0.2x's Python reader moved
into its Go core; this is enough for tests.)
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = 7


def records(path: str | Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    out, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def run_info(path: str | Path) -> dict[str, Any]:
    """The run record (id, name, group, job type, tags) and the config's keys and values."""
    import json

    info: dict[str, Any] = {"config": {}}
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            info.update(id=r.run.run_id, name=r.run.display_name, group=r.run.run_group,
                        job_type=r.run.job_type, tags=list(r.run.tags))
            updates = r.run.config.update
        elif kind == "config":
            updates = r.config.update
        else:
            continue
        for item in updates:
            key = item.key or "/".join(item.nested_key)
            info["config"][key] = json.loads(item.value_json)
    return info
