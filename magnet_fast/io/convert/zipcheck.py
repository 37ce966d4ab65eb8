"""Declared-size check of a torch.save zip before ``torch.load`` (docs/DESIGN.md, Conversion: "Bounds
checked before work")."""
from __future__ import annotations

import zipfile
from pathlib import Path

from magnet_fast.errors import CheckpointError

# torch.save stores every entry uncompressed, so what the entries expand to is (almost) the file's own size;
# a larger total means compressed storages, i.e. a decompression bomb (a 1 GiB tensor in a 1 MB file).
ZIP_SLACK = 1 << 20                 # headroom over the file size, bytes
MAX_CHECKPOINT_BYTES = 64 << 30     # absolute cap; the released MAGNeT checkpoints are < 4 GB


def check_zip_sizes(path: Path) -> None:
    """CheckpointError if the zip entries of ``path`` declare more bytes than the file holds (+ZIP_SLACK)
    or more than MAX_CHECKPOINT_BYTES; reads only the zip directory. Non-zip files pass (nothing to expand)."""
    path = Path(path)
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return                                  # torch.load reports unreadable files with its own message
    size = path.stat().st_size
    declared = sum(i.file_size for i in infos)
    biggest = max(infos, key=lambda i: i.file_size, default=None)
    if declared > min(size + ZIP_SLACK, MAX_CHECKPOINT_BYTES):
        raise CheckpointError(
            f"{path}: its zip entries declare {declared} bytes uncompressed (largest: {biggest.filename}, "
            f"{biggest.file_size} bytes, {'compressed' if biggest.compress_type != zipfile.ZIP_STORED else 'stored'}) "
            f"but the file is {size} bytes; torch.save stores tensors uncompressed, so this is not an unmodified "
            "audiocraft export (a compressed storage would be inflated in memory): refusing to load it")
