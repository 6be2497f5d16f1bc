"""Running a test file's Triton cases under the interpreter (TRITON_INTERPRET=1, CPU tensors).

Triton picks the interpreter when ``@triton.jit`` decorates, i.e. when the kernel modules are
imported; other test files import them first in compiled mode, so interpreter cases run in a
fresh ``pytest`` subprocess with TRITON_INTERPRET=1 (and NaN-poisoned outputs). A test file marks
its interpreter cases with ``@in_interpreter`` and adds one outer test calling
``run_interpreted(__file__, keyword)``, which selects them with ``-k keyword``.
"""
import contextlib
import inspect
import os
import subprocess
import sys
import threading
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


@contextlib.contextmanager
def concurrent_programs(switch_interval: float = 1e-4):
    """Inside the interpreter subprocess: run each launch's programs at the same time, one
    thread each, instead of one after another, so that kernels whose programs wait for each
    other (the grid barrier of the split-hidden and gemm modes) run in their GPU form here.

    The interpreter keeps the running program's index on one shared builder object; here it
    lives per thread. Python switches threads every ``switch_interval`` seconds, so a program
    spinning at a barrier yields soon. Built on the interpreter's internals (Triton 3.9's
    GridExecutor): skips the calling test where they differ."""
    from triton.runtime import interpreter

    needed = ("_init_args_hst", "_restore_args_dev")
    if not all(hasattr(interpreter.GridExecutor, name) for name in needed) or not all(
            hasattr(interpreter, name) for name in ("_patch_lang", "_implicit_cvt", "interpreter_builder")):
        pytest.skip(f"triton {interpreter.triton.__version__}'s interpreter has other internals")
    per_thread = threading.local()

    class ThreadIndex:
        def __get__(self, builder, owner=None):
            return getattr(per_thread, "grid_idx", None)

        def __set__(self, builder, value):
            per_thread.grid_idx = value

    def run_concurrently(self, *args_dev, **kwargs):
        spec = inspect.getfullargspec(self.fn)
        kwargs = {k: v for k, v in kwargs.items() if k in spec.args or k in spec.kwonlyargs}
        args_hst, kwargs_hst = self._init_args_hst(args_dev, kwargs)
        patch_scope = interpreter._patch_lang(self.fn)
        try:
            args = inspect.getcallargs(self.fn, *args_hst, **kwargs_hst)
            args = {name: arg if name in self.constexprs else interpreter._implicit_cvt(arg)
                    for name, arg in args.items()}
            grid = self.grid(args) if callable(self.grid) else self.grid
            grid = tuple(grid) + (1,) * (3 - len(grid))
            builder.set_grid_dim(*grid)
            errors = []

            def program(index):
                try:
                    builder.set_grid_idx(*index)
                    self.fn(**args)
                except BaseException as e:  # noqa: BLE001 - re-raised in the launching thread
                    errors.append(e)

            threads = [threading.Thread(target=program, args=((x, y, z),), daemon=True)
                       for x in range(grid[0]) for y in range(grid[1]) for z in range(grid[2])]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            assert not any(t.is_alive() for t in threads), "programs still running: a hang?"
            if errors:
                raise errors[0]
        finally:
            patch_scope.restore()
        self._restore_args_dev(args_dev, args_hst, kwargs, kwargs_hst)

    builder = interpreter.interpreter_builder
    builder_type = type(builder)
    saved_index = builder_type.__dict__.get("grid_idx", None)
    saved_call = interpreter.GridExecutor.__call__
    saved_interval = sys.getswitchinterval()
    current = getattr(builder, "grid_idx", None)
    builder_type.grid_idx = ThreadIndex()
    builder.grid_idx = current
    interpreter.GridExecutor.__call__ = run_concurrently
    sys.setswitchinterval(switch_interval)
    try:
        yield
    finally:
        sys.setswitchinterval(saved_interval)
        interpreter.GridExecutor.__call__ = saved_call
        if saved_index is None:
            del builder_type.grid_idx
        else:
            builder_type.grid_idx = saved_index
        builder.__dict__["grid_idx"] = current
