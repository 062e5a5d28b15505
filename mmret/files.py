"""Filesystem helpers every floor shares (the ground floor: imports nothing from mmret)."""

import os
import pathlib


def write_text_atomic(path: pathlib.Path, text: str) -> None:
  """Writes a sibling temporary file and renames it over `path`: readers see the old file or
  the new one, never half of one, and a failed write leaves the old file in place."""
  path = pathlib.Path(path)
  tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
  try:
    tmp.write_text(text)
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
