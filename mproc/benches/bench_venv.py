"""The virtual environments of the benches' Python sides (python_remote.py, python_buffer.py):
each is made once, with its pinned requirements from PyPI, and made again when they change."""
import os
import subprocess
import sys


def ensure_venv(venv, requirements, who):
    """Makes `venv` with `requirements` unless it already has exactly them; returns its
    python. `who` names the script in what it prints."""
    python = os.path.join(venv, "bin", "python")
    marker = os.path.join(venv, "mproc-requirements.txt")
    want = "\n".join(requirements) + "\n"
    try:
        with open(marker) as f:
            if f.read() == want and os.path.exists(python):
                return python
    except OSError:
        pass
    print(f"{who}: installing {' '.join(requirements)} into {venv}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", venv], check=True, timeout=300)
    subprocess.run(
        [python, "-m", "pip", "install", "--disable-pip-version-check", "-q", *requirements],
        check=True,
        timeout=900,
    )
    with open(marker, "w") as f:
        f.write(want)
    return python
