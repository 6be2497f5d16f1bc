"""Running a test file's Triton cases under the interpreter (TRITON_INTERPRET=1, CPU tensors).

Triton picks the interpreter when ``@triton.jit`` decorates, i.e. when the kernel modules are
imported; other test files import them first in compiled mode, so interpreter cases run in a
fresh ``pytest`` subprocess with TRITON_INTERPRET=1 (and NaN-poisoned outputs). A test file marks
its interpreter cases with ``@in_interpreter`` and adds one outer test calling
``run_interpreted(__file__, keyword)``, which selects them with ``-k keyword``.
"""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

in_interpreter = pytest.mark.skipif(not INTERPRETING, reason="runs inside the TRITON_INTERPRET=1 subprocess")
outside_interpreter = pytest.mark.skipif(INTERPRETING, reason="already inside the interpreter subprocess")


def skip_unless_interpreter_works():
    """Skip when Triton is missing, or when its interpreter cannot run with this NumPy: Triton
    3.6's interpreter passes integer kernel arguments as 1-element arrays and calls int() on them
    (range bounds), which NumPy >= 2.4 rejects; 3.9's interpreter is fine."""
    triton = pytest.importorskip("triton")
    triton_version = tuple(int(p) for p in triton.__version__.split(".")[:2])
    numpy_version = tuple(int(p) for p in np.__version__.split(".")[:2])
    if triton_version < (3, 7) and numpy_version >= (2, 4):
        pytest.skip(f"interpreter of triton {triton.__version__} fails with numpy {np.__version__}")


def run_interpreted(test_file: str, keyword=None, timeout: int = 900) -> str:
    """Run ``test_file`` (its cases matching ``-k keyword``, all when None) in a TRITON_INTERPRET=1
    subprocess; fail with its output unless every selected case passed (none skipped). Returns
    pytest's summary line."""
    skip_unless_interpreter_works()
    env = dict(os.environ, TRITON_INTERPRET="1", GATEDRNN_POISON_OUTPUTS="1")
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", os.path.abspath(test_file)]
    if keyword:
        command += ["-k", keyword]
    started = time.time()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, proc.stdout[-2000:]
    print(f"interpreter cases of {os.path.basename(test_file)}: {summary} ({time.time() - started:.0f} s)")
    return summary
