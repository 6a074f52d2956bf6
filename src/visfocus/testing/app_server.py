"""``visfocus app`` in a subprocess on a free localhost port, for end-to-end tests and the app benchmark."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

from visfocus.errors import VisfocusError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(log_path: Path, chars: int = 6000) -> str:
    return log_path.read_text(errors="replace")[-chars:] if log_path.exists() else ""


@contextlib.contextmanager
def running_app(log_path: Path, *app_args: str, startup_s: float = 180, threads: int = 1,
                env: Mapping[str, str] | None = None) -> Iterator[str]:
    """Start ``python -m visfocus.cli app --host 127.0.0.1 --port <free> *app_args`` (its output in ``log_path``,
    ``threads`` torch threads, ``env`` added to the environment, e.g. ``VISFOCUS_APP_PASSWORD``), yield its URL once
    it answers (with ``--auth``: its login page), and stop it on the way out. A process that exits or stays silent
    for ``startup_s`` is a ``VisfocusError`` carrying the end of its log."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": str(threads), **(env or {})}
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "visfocus.cli", "app", "--host", "127.0.0.1", "--port",
                                    str(port), *app_args], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if process.poll() is not None:
                raise VisfocusError(f"the app exited with code {process.returncode}:\n{log_tail(log_path)}")
            if time.monotonic() > deadline:
                raise VisfocusError(f"the app did not answer on {url} within {startup_s} s:\n{log_tail(log_path)}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
