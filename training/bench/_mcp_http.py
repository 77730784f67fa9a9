"""Start `tinymu-mcp --http` on a free loopback port for a benchmark, and wait until it listens."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def start_mcp_http(root: Path, env_changes: dict[str, str], extra_args: list[str] = (),
                   timeout_s: float = 90.0) -> tuple[subprocess.Popen, str]:
    """The server process and its MCP endpoint URL; the server reads only `root`, without a token."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, **env_changes}
    env.pop("TINYMU_MCP_TOKEN", None)
    process = subprocess.Popen([sys.executable, "-m", "mcp_server", "--http", "--port", str(port), "--roots", str(root),
                                *extra_args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read().decode()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, f"http://127.0.0.1:{port}/mcp"
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server did not start within {timeout_s:g} s")
