"""The peers' own virtual environment, for the side-by-side benchmarks (bench/wyoming_bench.py,
bench/peers_bench.py): their pins clash with ours, so they never share our venv.

    python -m bench.peers_venv [DIR]     # creates it (needs PyPI), prints its python

It holds wyoming-piper, wyoming-faster-whisper, piper-tts with its HTTP server (the `http` extra) and
py-spy (to profile either side). Created once; a venv that lacks a pin is topped up.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from core.config import PROJECT_ROOT

PEERS = ("wyoming-piper==2.5.2", "wyoming-faster-whisper==3.8.1", "piper-tts[http]==1.8.0", "py-spy==0.4.3")
DEFAULT_VENV = PROJECT_ROOT / ".venv-peers"


def peers_python(venv: Path = DEFAULT_VENV) -> Path:
    """The peers' python, creating or completing their virtual environment first."""
    python = venv / "bin" / "python"
    marker = venv / ".peers"
    if python.exists() and marker.is_file() and marker.read_text() == "\n".join(PEERS):
        return python
    print(f"installing {', '.join(PEERS)} into {venv}", file=sys.stderr)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PEERS], check=True)
    marker.write_text("\n".join(PEERS))
    return python


if __name__ == "__main__":
    print(peers_python(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_VENV))
