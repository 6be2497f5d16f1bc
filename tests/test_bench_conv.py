"""perf/bench_conv.py at tiny settings: the table parses, the ratios are positive and the
figures --json writes match the table (timings themselves are the benchmark's business, not
the tests')."""
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import gatedrnn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not gatedrnn.available_backends()["cython"].available,
                                reason="the cython backend is not built")


@pytest.fixture(scope="module")
def bench():
    path = os.path.join(ROOT, "perf", "bench_conv.py")
    spec = importlib.util.spec_from_file_location("bench_conv_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there while being defined
    spec.loader.exec_module(module)
    return module


def table_rows(text):
    """{(layer, mode): ratio} from the markdown table, geometric means under the key (label, mode)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 8 or cells[0] in ("layer", "---"):
            continue
        ratio = re.match(r"\**([0-9.]+)", cells[7])
        assert ratio, line
        rows[(cells[0].strip("*"), cells[1])] = float(ratio.group(1))
    return rows


def test_quick_table_and_json(bench, capsys, tmp_path):
    figures = tmp_path / "conv.json"
    # --system-malloc: the allocator settings are process-wide; test_steady_allocator checks them
    # in a process of its own
    rows = bench.main(["--quick", "--batch", "2", "--repeats", "1", "--warmup", "1", "--system-malloc",
                       "--json", str(figures)])
    out = capsys.readouterr().out
    assert f"{torch.get_num_threads()} threads (torch and gatedrnn)" in out and "glibc defaults" in out
    parsed = table_rows(out)
    expected = {(name, mode) for name in bench.QUICK_NAMES for mode in bench.MODES}
    assert expected | {("geometric mean", mode) for mode in bench.MODES} == set(parsed)
    assert all(ratio > 0 for ratio in parsed.values())
    written = json.load(open(figures))
    assert len(written["rows"]) == len(rows) == len(expected)
    for row in written["rows"]:
        assert (row["layer"], row["mode"]) in expected and row["batch"] == 2 and row["dtype"] == "float32"
        assert row["ratio"] == pytest.approx(row["torch_ms"] / row["ours_ms"])
        assert row["ratio"] > 0 and row["torch_gflops"] > 0 and row["ours_gflops"] > 0
        assert parsed[(row["layer"], row["mode"])] == pytest.approx(row["ratio"], abs=0.006)
    shape = next(s for s in bench.SHAPES if s.name == "3x3 512@7")
    assert shape.out_size() == 7 and shape.forward_flop(1) == 2 * 512 * 49 * 512 * 9


def test_every_resnet18_convolution_is_a_row(bench):
    """The rows are exactly the distinct convolutions of our ResNet-18 at 224x224."""
    from gatedrnn.models import resnet18

    model = resnet18(num_classes=10, backend="cython")
    seen = set()

    def record(module, inputs, output):
        seen.add((module.in_channels, module.out_channels, inputs[0].shape[-1], module.kernel_size[0],
                  module.stride[0], module.padding[0]))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 224, 224))
    for hook in hooks:
        hook.remove()
    assert seen == {(s.c_in, s.c_out, s.size, s.kernel, s.stride, s.padding) for s in bench.SHAPES}


def test_network_row_and_plot(bench, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "conv.png"
    rows = bench.main(["--network-only", "--batch", "1", "--size", "64", "--repeats", "1", "--warmup", "1",
                       "--plot", str(png)])
    out = capsys.readouterr().out
    assert len(rows) == 1 and rows[0].mode == "train step" and rows[0].ratio > 0
    assert "| ResNet-18 64x64 | train step | 1 |" in out
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_steady_allocator():
    """The CPU runs fix glibc's thresholds (mallopt accepts both values) and say so in the header."""
    script = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('b', sys.argv[1]); "
              "m = importlib.util.module_from_spec(spec); sys.modules['b'] = m; spec.loader.exec_module(m); "
              "print(m.steady_allocator())")
    result = subprocess.run([sys.executable, "-c", script, os.path.join(ROOT, "perf", "bench_conv.py")],
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize("autocast", [None, torch.bfloat16], ids=["float32", "autocast-bf16"])
def test_network_step_row(bench, autocast):
    """The --gpu --network row's step (channels_last ResNet-18, autocast or not) runs end to end
    on both sides; here on the CPU with the cython backend and a timer that runs each step once."""
    calls = []

    def timer(fn):
        fn()
        calls.append(fn)
        return 2.0 if len(calls) % 2 else 1.0  # torch's side first: ratio 2

    row = bench.bench_network_step(2, 32, autocast, device="cpu", backend="cython", timer=timer, rounds=1)
    assert len(calls) == 2 and row.ratio == pytest.approx(2.0)
    assert row.mode == "train step" and row.dtype.endswith("NHWC") and row.gflop == 0.0
