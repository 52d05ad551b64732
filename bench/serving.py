"""What the benchmarks that drive a real ``autoglm serve`` share: a free port, and starting a
server on a temporary data directory until it answers (its admin key read back)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def launch(work: Path, config_yaml: str, port: int) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``autoglm serve`` with ``config_yaml`` (data in ``work/data``); its admin key."""
    config = work / "bench.yaml"
    config.write_text(config_yaml)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOGLM_")}
    env["AUTOGLM_DATA_DIR"] = str(work / "data")
    command = Path(sys.executable).parent / "autoglm"
    executable = str(command) if command.exists() else shutil.which("autoglm") or "autoglm"
    process = subprocess.Popen(
        [executable, "serve", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    key_file = work / "data" / "admin.key"
    deadline = time.monotonic() + 90
    while not key_file.exists() or not answers(port):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError("autoglm serve did not start")
        time.sleep(0.2)
    return process, key_file.read_text().strip()
