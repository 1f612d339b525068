"""The server never imports the device agent, and loads no ML runtime until a job handler needs one."""

from __future__ import annotations

import subprocess
import sys


def test_server_imports_neither_edge_agent_nor_torch() -> None:
    code = (
        "import sys, server.app, server.cli, server.worker, server.job_handlers; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('edge_agent', 'torch', 'transformers', 'trl', 'llama_cpp')); print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
