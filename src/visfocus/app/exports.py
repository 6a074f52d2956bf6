"""Where the app's exports (figures and answers + traces) go: one folder the app owns, one subfolder per export, and
every export older than the TTL deleted whenever a new one is made (the folder itself when the app exits), so an app
that runs for weeks does not fill the disk. Gradio's served copies are swept by ``gr.Blocks(delete_cache=...)``."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from pathlib import Path

EXPORT_PREFIX = "export-"


def stale_exports(root: Path, now: float, ttl_s: float) -> list[Path]:
    """The export folders under ``root`` last changed more than ``ttl_s`` seconds before ``now``, oldest first."""
    found = [(path.stat().st_mtime, path) for path in root.glob(f"{EXPORT_PREFIX}*") if path.is_dir()]
    return [path for changed, path in sorted(found) if now - changed > ttl_s]


class ExportFolder:
    """The app's export folder (under the system temp folder, where Gradio may serve files from)."""

    def __init__(self, ttl_s: float, root: Path | None = None) -> None:
        self.ttl_s = ttl_s
        self._root = root

    @property
    def root(self) -> Path:
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="visfocus-app-exports-"))
            atexit.register(shutil.rmtree, self._root, ignore_errors=True)
        return self._root

    def prune(self, now: float | None = None) -> list[Path]:
        """Delete the exports older than the TTL; the ones deleted."""
        stale = stale_exports(self.root, time.time() if now is None else now, self.ttl_s)
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return stale

    def new(self) -> Path:
        """A fresh folder for one export, after the old ones are deleted."""
        self.prune()
        return Path(tempfile.mkdtemp(prefix=EXPORT_PREFIX, dir=self.root))
