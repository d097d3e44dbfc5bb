"""What a checkpoint holds, recorded in its COMPLETE marker, and the check that it still holds it.

The marker is JSON: {"step": N, "files": {"state/optimizer.bin": [size, digest], ...}}. `verify`
compares a directory with it and names the first damage in words a user can act on: a file
missing, a file of the wrong size (a copy or a disk cut short), or content that differs.

Why a sampled checksum and not a hash of every byte: a GPU checkpoint of a 7B model with its Adam
state is ~100 GB, which even crc32 (~1.5 GB/s here) would take a minute to read at every save and
every resume. Sizes catch truncation, the common damage; the digest reads at most ~3 MiB per file
(the first and last MiB and 16 blocks of 64 KiB spread between them; files under 4 MiB whole), so
it also catches a file replaced or overwritten in any sampled block, at a cost that does not grow
with the file. A flipped bit between samples goes unnoticed; the loaders' own checks remain.
Markers written before manifests existed (the bare step number) are trusted as they are.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

MARKER = "COMPLETE"
_EDGE = 1 << 20    # bytes read at each end of a file
_BLOCK = 1 << 16   # bytes per sample in between
_SAMPLES = 16
_WHOLE = 4 << 20   # files up to this size are read entirely


def digest(path: Path, size: int) -> str:
    """crc32 of the sampled bytes (see the module docstring), as 8 hex digits."""
    crc = 0
    with open(path, "rb") as fh:
        if size <= _WHOLE:
            return f"{zlib.crc32(fh.read()):08x}"
        span = size - 2 * _EDGE - _BLOCK
        offsets = [0] + [_EDGE + span * i // (_SAMPLES - 1) for i in range(_SAMPLES)] + [size - _EDGE]
        for off in offsets:
            fh.seek(off)
            crc = zlib.crc32(fh.read(_EDGE if off in (0, size - _EDGE) else _BLOCK), crc)
    return f"{crc:08x}"


def build(root: Path, step: int) -> dict:
    """The manifest of every file under `root` (the marker itself excluded)."""
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if rel != MARKER:
                size = path.stat().st_size
                files[rel] = [size, digest(path, size)]
    return {"step": step, "files": dict(sorted(files.items()))}


def write_marker(root: Path, step: int) -> None:
    (root / MARKER).write_text(json.dumps(build(root, step), indent=0) + "\n")


def verify(root: Path, prefix: str = "") -> str | None:
    """None if `root` holds what its marker lists (only the files under `prefix`, e.g. "model/", when
    given); else one phrase naming the first damage, e.g. "state/optimizer.bin is missing"."""
    try:
        text = (root / MARKER).read_text()
    except FileNotFoundError:
        return f"it has no {MARKER} marker (its save was interrupted)"
    except OSError as exc:
        return f"its {MARKER} marker cannot be read ({exc.strerror})"
    if text.strip().isdigit():  # a marker from before manifests: nothing to compare with
        return None
    try:
        files = json.loads(text)["files"]
    except (ValueError, KeyError, TypeError):
        return f"its {MARKER} marker is not a manifest this version can read"
    for rel, (size, want) in files.items():
        if not rel.startswith(prefix):
            continue
        path = root / rel
        try:
            have = path.stat().st_size
        except FileNotFoundError:
            return f"{rel} is missing"
        if have != size:
            return f"{rel} has {have:,} bytes, {size:,} were saved (cut short or overwritten)"
        if digest(path, size) != want:
            return f"{rel} differs from what was saved (checksum mismatch)"
    return None
