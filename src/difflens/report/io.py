"""Writing results: JSON, CSV, bytes/text and checkpoints through the one atomic writer
(``difflens.data.files.atomic_path``: temp file, then rename), and the resumable per-level log."""

from __future__ import annotations

import json
import os
from pathlib import Path

from difflens.data.files import atomic_path, json_clean, save_torch, write_bytes, write_csv, write_json, write_text
from difflens.errors import DifflensError

__all__ = [
    "LevelLog",
    "atomic_path",
    "json_clean",
    "save_torch",
    "write_bytes",
    "write_csv",
    "write_json",
    "write_text",
]


class LevelLog:
    """Per-level results appended as they finish (JSON lines after a header of the run's settings),
    so an interrupted run loses at most the level in progress and ``--resume`` continues it."""

    def __init__(self, path: Path, config: dict, resume: bool):
        self.path = Path(path)
        self.done: dict[int, dict] = {}
        if resume and self.path.exists():
            lines = self.path.read_text().splitlines()
            header = json.loads(lines[0]) if lines else None
            if header != json_clean(config):
                raise DifflensError(
                    f"cannot resume: the settings differ from the interrupted run in {self.path.parent} "
                    "(run without --resume to start over)"
                )
            for line in lines[1:]:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut short by the interruption
                self.done[rec["index"]] = rec["level"]
            write_text(
                self.path, "\n".join([lines[0], *(json.dumps(self._rec(i, v)) for i, v in self.done.items())]) + "\n"
            )
        else:
            write_text(self.path, json.dumps(json_clean(config)) + "\n")

    @staticmethod
    def _rec(index: int, level: dict) -> dict:
        return {"index": index, "level": level}

    def append(self, index: int, level: dict) -> None:
        """One finished level, flushed to disk before returning."""
        with self.path.open("a") as fh:
            fh.write(json.dumps(json_clean(self._rec(index, level))) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
