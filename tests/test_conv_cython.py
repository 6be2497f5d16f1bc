"""The Cython conv2d's float32 fast paths (cpu/conv.pyx with the AVX-512 kernel of
cpu/_conv_gemm.h; BLAS where the CPU lacks AVX-512) against torch in float64: tiles that span
samples, row bands, Winograd F(2x2, 3x3), the sample-gathering input gradient of small images,
the transposed weight gradient, the m and n edges of the register blocks, groups, thread counts
and determinism.

tests/test_conv.py covers the semantics on every backend; these cases are shaped to reach each
branch of the Cython tiling (sizes chosen so that 2 cores run the file in a few seconds)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gatedrnn.ops import conv as conv_ops
from gatedrnn.ops.conv import conv2d

from spatial_checks import needs_cython

pytestmark = needs_cython("conv")

# float32 against float64: norm-wise relative error; sums of up to 4608 products in float32.
TOLERANCE = 2e-5

# (batch, in_channels, size, out_channels, kernel, stride, padding, groups)
CASES = {
    # 7x7 output, batch 5: the input gradient gathers 3 samples per item (3 + 2)
    "small-image-spread": (5, 24, 7, 32, 3, 1, 1, 1),
    # 14 -> 7 with stride 2 and 40 output channels: n edge of 8 (40 = 32 + 8), m edge in grad_w^T
    "stride2-n-edge": (3, 20, 14, 40, 3, 2, 1, 1),
    # rows of w^T not a multiple of 8 (3 * 9 = 27) and 17 output channels (m edge of 1 in the forward)
    "m-edges": (2, 3, 11, 17, 3, 1, 1, 1),
    # two groups of 16 output channels: the fast weight path per group
    "groups-16": (2, 32, 9, 32, 3, 1, 1, 2),
    # the register-kernel weight gradient with 40 output channels (grad_y's second 32-column panel
    # 8 wide: the 8x16 block) and K = 45 (m edge of 5 rows in the whole-reduction GEMM)
    "weight-panel-edges": (3, 5, 9, 40, 3, 1, 1, 1),
    # 130 input channels: the weight gradient split by input channels on 1 and 2 threads (65 + 65),
    # by pixels on 3; 24 output channels (one 32-column panel, 24 wide)
    "weight-channel-split": (2, 130, 6, 24, 3, 1, 1, 1),
    # fewer than 16 output channels per group: the weight gradient's BLAS path
    "groups-8": (2, 16, 9, 16, 3, 1, 1, 2),
    # the 1x1 stride-2 downsample and the direct 1x1 stride-1 path
    "1x1-stride2": (3, 16, 10, 32, 1, 2, 0, 1),
    "1x1-direct": (2, 16, 6, 48, 1, 1, 0, 1),
    # Og <= K: the 1x1 weight gradient on the register kernel
    "1x1-direct-fast-weight": (2, 48, 6, 32, 1, 1, 0, 1),
    # Og > K with 100 output pixels a sample: forward tiles cut at sample ends
    "1x1-stride2-no-span": (3, 16, 20, 32, 1, 2, 0, 1),
    # Og > K >= 16 with a 1x1 kernel: the wide weight gradient (threads split the input channels,
    # 40 = 16 + 24 on 2 threads); 400 output pixels a sample: two chunks of 200
    "1x1-wide-weight-chunks": (2, 40, 40, 72, 1, 2, 0, 1),
    # ... with padding (zero columns in the unfolded chunk), stride 3 and odd sizes
    "1x1-wide-weight-padding": (3, 33, 13, 70, 1, 3, 1, 1),
    # ... 7x7 outputs (49 pixels): five samples a chunk, the batch of 11 in chunks of 5, 5 and 1
    "1x1-wide-weight-samples": (11, 24, 13, 40, 1, 2, 0, 1),
    # 1x1 stride 2 input gradient written row by row (no memset): odd input width (15 -> 8
    # columns, the last input column read by no output), and a sample too large for one tile
    # (32 x 10000 > 262144: the memset-and-add fallback)
    "1x1-stride2-odd-width": (2, 24, 15, 40, 1, 2, 0, 1),
    "1x1-stride2-large-sample": (1, 16, 200, 32, 1, 2, 0, 1),
    # stride 2 with output rows of 20 and 33 pixels: the vector gather's full and tail steps
    "stride2-wide-rows": (2, 8, 40, 16, 3, 2, 1, 1),
    "stride2-odd-rows": (2, 4, 66, 16, 1, 2, 0, 1),
    # 7x7/2 stem-like, odd size
    "stem": (2, 3, 21, 32, 7, 2, 3, 1),
    # stride 1 with >= 256 input pixels a batch: the input gradient as a flipped forward
    "flipped-3x3": (4, 16, 17, 32, 3, 1, 1, 1),
    "flipped-5x5-pad1-groups": (4, 16, 17, 32, 5, 1, 1, 2),
    # padding beyond the kernel's reach: no flipped forward, the packed path instead
    "wide-padding": (4, 8, 16, 16, 3, 1, 3, 1),
    # 3x3 'same' on 7x7 images: the forward (and the flipped input gradient: 6 x 49 >= 256
    # input pixels) by Winograd, or by row bands (test_row_bands_match_torch_and_the_plain_forward)
    "row-bands-7x7": (6, 40, 7, 24, 3, 1, 1, 1),
    # 3x3 stride 1 with 8 input channels: too few for Winograd, the direct forward
    "3x3-few-channels": (4, 8, 12, 16, 3, 1, 1, 1),
}


def reference_and_ours(case, seed=0, dtype=torch.float32):
    batch, c_in, size, c_out, kernel, stride, padding, groups = case
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c_in, size, size, generator=generator, dtype=torch.float64)
    w = torch.randn(c_out, c_in // groups, kernel, kernel, generator=generator, dtype=torch.float64)
    b = torch.randn(c_out, generator=generator, dtype=torch.float64)
    options = dict(stride=stride, padding=padding, groups=groups)
    leaves64 = [t.clone().requires_grad_() for t in (x, w, b)]
    y64 = F.conv2d(*leaves64, **options)
    grad_y = torch.randn(y64.shape, generator=generator, dtype=torch.float64)
    expected = [y64.detach()] + list(torch.autograd.grad(y64, leaves64, grad_y))
    leaves = [t.to(dtype).requires_grad_() for t in (x, w, b)]
    y = conv2d(*leaves, **options, backend="cython")
    actual = [y.detach()] + list(torch.autograd.grad(y, leaves, grad_y.to(dtype)))
    return actual, expected


def check(case, **kwargs):
    actual, expected = reference_and_ours(case, **kwargs)
    for name, a, e in zip(("y", "grad_x", "grad_w", "grad_b"), actual, expected):
        error = float((a.double() - e).norm() / e.norm())
        assert error <= TOLERANCE, f"{name}: relative error {error:.2e}"
    return actual


def torch_and_ours(x, w, b, **options):
    """torch's float64 output and gradients (input, weight, bias) for a fixed random grad_y, and a
    function that computes ours in float32 on the cython backend, for the same call."""
    generator = torch.Generator().manual_seed(11)
    leaves64 = [t.clone().requires_grad_() for t in (x, w, b)]
    y64 = F.conv2d(*leaves64, **options)
    grad_y = torch.randn(y64.shape, generator=generator, dtype=torch.float64)
    expected = [y64.detach()] + list(torch.autograd.grad(y64, leaves64, grad_y))

    def ours():
        leaves = [t.float().requires_grad_() for t in (x, w, b)]
        y = conv2d(*leaves, **options, backend="cython")
        return [y.detach()] + list(torch.autograd.grad(y, leaves, grad_y.float()))

    return expected, ours


def on_threads(counts, function):
    """function() with torch's thread count set to each of `counts` in turn (restored after): the
    results in that order."""
    previous = torch.get_num_threads()
    try:
        results = []
        for threads in counts:
            torch.set_num_threads(threads)
            results.append(function())
        return results
    finally:
        torch.set_num_threads(previous)


def check_winograd(extension, x, w, b, bitwise, **options):
    """Our float32 call with Winograd (where it applies) against torch in float64 and against
    the same call without it, forward and every gradient (relative norm, and no element off by
    more than float32 rounding of the largest terms); and its first ``bitwise`` results (y,
    grad_x, grad_w) the same bits on 1, 2, 3 and 5 threads."""
    expected, ours = torch_and_ours(x, w, b, **options)
    previous_winograd = extension.set_winograd(True)
    try:
        runs = on_threads((1, 2, 3, 5), ours)
        extension.set_winograd(False)
        direct = ours()
    finally:
        extension.set_winograd(previous_winograd)
    for label, a, e, d in zip(("y", "grad_x", "grad_w", "grad_b"), runs[0], expected, direct):
        assert float((a.double() - e).norm() / e.norm()) <= TOLERANCE, label
        assert float((a - d).norm() / d.norm()) <= TOLERANCE, label
        assert float((a.double() - e).abs().max()) <= 1e-4 * float(e.abs().max()), label
    if extension.REGISTER_KERNEL:
        for run in runs[1:]:
            assert all(torch.equal(a, b) for a, b in zip(run[:bitwise], runs[0][:bitwise]))


@pytest.mark.parametrize("name", list(CASES))
def test_float32_paths_match_torch_float64(name):
    check(CASES[name])


@pytest.mark.parametrize("budget", [(600, 1), (2000, 16), (1 << 20, 32)], ids=["tiny", "small", "large"])
@pytest.mark.parametrize("name", ["small-image-spread", "stride2-n-edge", "weight-panel-edges", "groups-16",
                                  "1x1-direct", "flipped-3x3", "1x1-stride2-no-span"])
def test_float32_tiles_spanning_samples(name, budget):
    """Budgets that make forward tiles start and end inside samples and inside output rows (and,
    with the large one, one tile hold the whole batch)."""
    extension = conv_ops.cpu_module("conv")
    previous = extension.set_tile_budget(*budget)
    try:
        check(CASES[name])
    finally:
        extension.set_tile_budget(*previous)


def test_row_band_plan():
    """Which forwards run by row bands: small padded images where the kernel rows that meet only
    padding are at least 5% of the work (none without the register kernel)."""
    extension = conv_ops.cpu_module("conv")

    def plan(batch, channels, size, out_channels, kernel, stride, padding, dilation=1):
        out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
        return extension.forward_row_bands(batch, channels, size, size, out_channels, kernel, kernel, out, out,
                                           stride, stride, padding, padding, dilation, dilation, 1)

    whole = lambda rows, kernel: [(0, rows, 0, kernel)]  # noqa: E731
    assert plan(8, 256, 56, 256, 3, 1, 1) == whole(56, 3)  # large image: never
    assert plan(8, 256, 14, 256, 3, 1, 1) == whole(14, 3)  # 2/42 of the work: too little
    assert plan(8, 16, 7, 16, 1, 1, 0) == whole(7, 1)      # no padding
    if not extension.REGISTER_KERNEL:
        assert plan(8, 512, 7, 512, 3, 1, 1) == whole(7, 3)
        return
    assert plan(8, 512, 7, 512, 3, 1, 1) == [(0, 1, 1, 3), (1, 6, 0, 3), (6, 7, 0, 2)]
    # rows that meet only padding get a band with no kernel rows
    assert plan(2, 4, 4, 3, 3, 1, 3) == [(0, 1, 3, 3), (1, 2, 2, 3), (2, 3, 1, 3), (3, 5, 0, 3), (5, 6, 0, 2),
                                         (6, 7, 0, 1), (7, 8, 0, 0)]
    assert plan(1, 3, 5, 4, 3, 2, 1, dilation=2) == [(0, 1, 1, 3), (1, 2, 0, 2)]


# (batch, in_channels, height, width, out_channels, kernel, stride, padding, dilation, groups)
BAND_GEOMETRIES = {
    "3x3-same-7x7": (3, 40, 7, 7, 24, 3, 1, 1, 1, 1),
    "5x3-stride-dilation-groups": (2, 6, 9, 8, 18, (5, 3), (1, 2), (2, 1), (1, 2), 2),
    "rows-of-only-padding": (2, 4, 4, 4, 3, 3, 1, 3, 1, 1),
    "dilation2-stride2": (1, 3, 5, 11, 17, 3, 2, 1, 2, 1),
}


@pytest.mark.parametrize("name", list(BAND_GEOMETRIES))
def test_row_bands_match_torch_and_the_plain_forward(name):
    """The forward by row bands against torch (float64) and against the same call without bands,
    forward and every gradient (the stride-1 input gradient runs the forward too), and the same
    bits on 1, 2 and 3 threads."""
    extension = conv_ops.cpu_module("conv")
    batch, c_in, height, width, c_out, kernel, stride, padding, dilation, groups = BAND_GEOMETRIES[name]
    kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(batch, c_in, height, width, generator=generator, dtype=torch.float64)
    w = torch.randn(c_out, c_in // groups, *kernel, generator=generator, dtype=torch.float64)
    b = torch.randn(c_out, generator=generator, dtype=torch.float64)
    expected, ours = torch_and_ours(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)

    # Winograd takes the 3x3 stride-1 cases where it applies: off here, to test the bands
    previous_bands, previous_winograd = extension.set_row_bands(True), extension.set_winograd(False)
    try:
        runs = on_threads((1, 2, 3), ours)
        extension.set_row_bands(False)
        plain = ours()
    finally:
        extension.set_row_bands(previous_bands)
        extension.set_winograd(previous_winograd)
    for label, a, e, p in zip(("y", "grad_x", "grad_w", "grad_b"), runs[0], expected, plain):
        assert float((a.double() - e).norm() / e.norm()) <= TOLERANCE, label
        assert float((a - p).norm() / p.norm()) <= TOLERANCE, label
    if extension.REGISTER_KERNEL:
        for run in runs[1:]:
            assert torch.equal(run[0], runs[0][0]) and torch.equal(run[1], runs[0][1])


def test_winograd_plan():
    """Which float32 forwards run Winograd, with how many transformed positions a tile: 3x3, no
    dilation, at least 16 input and 8 output channels a group, on the register kernel only; 16
    (F(2x2, 3x3)) at stride 1, 25 at stride 2 where the 2x2 tiles cover the output within 10%
    and the batch has 128 tiles."""
    extension = conv_ops.cpu_module("conv")

    def plan(batch, channels, size, out_channels, kernel=3, stride=1, padding=1, dilation=1, groups=1):
        out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
        return extension.forward_winograd(batch, channels, size, size, out_channels, kernel, kernel, out, out,
                                          stride, stride, padding, padding, dilation, dilation, groups)

    kernel_path = extension.REGISTER_KERNEL
    assert plan(8, 64, 56, 64) == (16 if kernel_path else 0)
    assert plan(1, 16, 1, 8, padding=2) == (16 if kernel_path else 0)
    assert plan(2, 32, 9, 16, groups=2) == (16 if kernel_path else 0)  # 16 input channels a group
    assert plan(8, 64, 56, 128, stride=2) == (25 if kernel_path else 0)  # 28x28 outputs
    assert plan(1, 64, 56, 128, stride=2) == (25 if kernel_path else 0)  # 196 tiles
    assert plan(8, 256, 14, 512, stride=2) == 0    # 7x7 outputs: 4x4 tiles, 31% unused
    assert plan(1, 128, 28, 256, stride=2) == 0    # 49 tiles
    assert plan(2, 30, 9, 16, groups=2) == 0       # 15 input channels a group
    assert plan(8, 8, 56, 64) == 0                 # too few input channels
    assert plan(8, 64, 56, 4) == 0                 # fewer output channels than a register block
    assert plan(8, 64, 56, 64, stride=3) == 0
    assert plan(8, 64, 56, 64, dilation=2, padding=2) == 0
    assert plan(8, 64, 56, 64, kernel=5, padding=2) == 0
    assert plan(8, 64, 56, 64, kernel=1, padding=0) == 0
    previous = extension.set_winograd(False)
    try:
        assert plan(8, 64, 56, 64) == 0 and plan(8, 64, 56, 128, stride=2) == 0
    finally:
        extension.set_winograd(previous)


# (batch, in_channels, height, width, out_channels, padding (h, w), groups, stride); 3x3
WINOGRAD_GEOMETRIES = {
    # odd output sizes (9 x 11): the last tile row and column half used
    "odd-sizes": (2, 20, 9, 11, 24, (1, 1), 1, 1),
    # no padding (6 x 5 outputs) and padding 2 (7 x 8 from 5 x 6), and different per axis
    "valid": (3, 16, 8, 7, 16, (0, 0), 1, 1),
    "padding-2": (2, 16, 5, 6, 8, (2, 2), 1, 1),
    "padding-1-2": (2, 17, 6, 9, 12, (1, 2), 1, 1),
    # two groups of 16 input and 24 output channels
    "groups": (2, 32, 9, 9, 48, (1, 1), 2, 1),
    # one output pixel a sample (a tile with one used output)
    "one-pixel": (3, 16, 1, 1, 8, (1, 1), 1, 1),
    # 16 tiles in all: the threads split the output channels (40: 24 + 16 on 2 threads), and 15
    # (on 5 threads rounded edges 0, 0, 8, 8, 16: the fourth share must stop at 15)
    "channel-split": (1, 24, 7, 7, 40, (1, 1), 1, 1),
    "channel-split-15": (1, 16, 7, 7, 15, (1, 1), 1, 1),
    # no padding with 288 input pixels: the input gradient as a Winograd forward at padding 2
    "flipped-valid": (2, 16, 12, 12, 16, (0, 0), 1, 1),
    # 136 input channels: the forward GEMMs' reduction in two blocks of the register kernel
    "two-reduction-blocks": (2, 136, 6, 6, 8, (1, 1), 1, 1),
    # 400 tiles (100 a sample): forward blocks of 96 tiles and weight-gradient blocks of 128
    # that start and end inside samples; 20 output channels (a 16 + 4 vector step in Z)
    "blocks-span-samples": (4, 64, 20, 20, 20, (1, 1), 1, 1),
    # tile rows of 19 tiles (16 + 3 in the vector steps), odd width 37, 380 tiles
    "wide-rows": (1, 16, 40, 37, 8, (1, 1), 1, 1),
    # stride 2 (5x5 patches 4 input columns apart): 20 x 20 outputs from 40 x 39 (the last
    # patch column past the image), 10-tile rows, 400 tiles; and 2 groups at padding 0, 36 x 36
    # outputs from 73 (18-tile rows: 16 + 2), 3 x 324 tiles
    "stride2": (4, 24, 40, 39, 16, (1, 1), 1, 2),
    "stride2-groups-valid": (3, 32, 73, 73, 16, (0, 0), 2, 2),
    # stride 2, padding 2 / 0 per axis, odd input sizes: 18 x 16 outputs of 33 x 34
    "stride2-padding-2-0": (2, 16, 33, 34, 8, (2, 0), 1, 2),
    # 680 output channels at stride 2: the weight gradient's blocks capped at 112 tiles (its Z^T
    # within 8 MiB), 147 tiles in two blocks
    "stride2-many-outputs": (3, 16, 28, 28, 680, (1, 1), 1, 2),
}


@pytest.mark.parametrize("name", list(WINOGRAD_GEOMETRIES))
def test_winograd_matches_torch_and_the_direct_forward(name):
    """The Winograd forward and weight gradient (stride 1 and 2) against torch (float64) and
    against the same call without them, forward and every gradient (the stride-1 input
    gradient runs the forward on the flipped weights where the batch has 256 input pixels), and
    the same bits on 1, 2, 3 and 5 threads (on 3, the weight gradient's thread shares of 32 input
    channels in two groups are 8 / 16 / 8 rows: the middle one spans both groups)."""
    extension = conv_ops.cpu_module("conv")
    batch, c_in, height, width, c_out, padding, groups, stride = WINOGRAD_GEOMETRIES[name]
    out_height, out_width = (height + 2 * padding[0] - 3) // stride + 1, (width + 2 * padding[1] - 3) // stride + 1
    positions = extension.forward_winograd(batch, c_in, height, width, c_out, 3, 3, out_height, out_width,
                                           stride, stride, padding[0], padding[1], 1, 1, groups)
    assert positions == ((16 if stride == 1 else 25) if extension.REGISTER_KERNEL else 0)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(batch, c_in, height, width, generator=generator, dtype=torch.float64)
    w = torch.randn(c_out, c_in // groups, 3, 3, generator=generator, dtype=torch.float64)
    b = torch.randn(c_out, generator=generator, dtype=torch.float64)
    check_winograd(extension, x, w, b, bitwise=3, stride=stride, padding=padding, groups=groups)


WINOGRAD_TEAM_SCRIPT = """
import torch, torch.nn.functional as F
from gatedrnn.ops.conv import conv2d
torch.manual_seed(0)
torch.set_num_threads(4)
for stride, size in ((1, 9), (2, 40)):
    x = torch.randn(2, 40, size, size, dtype=torch.float64)
    w = torch.randn(24, 40, 3, 3, dtype=torch.float64)
    leaves64 = [t.clone().requires_grad_() for t in (x, w)]
    y64 = F.conv2d(*leaves64, stride=stride, padding=1)
    grad_y = torch.randn(y64.shape, dtype=torch.float64)
    expected = [y64.detach()] + list(torch.autograd.grad(y64, leaves64, grad_y))
    leaves = [t.float().requires_grad_() for t in (x, w)]
    y = conv2d(*leaves, stride=stride, padding=1, backend="cython")
    actual = [y.detach()] + list(torch.autograd.grad(y, leaves, grad_y.float()))
    for a, e in zip(actual, expected):
        assert float((a.double() - e).norm() / e.norm()) <= 2e-5
print("ok")
"""


def test_winograd_with_fewer_openmp_threads_than_asked():
    """OpenMP may run a smaller team than the thread count asked for (OMP_THREAD_LIMIT=2 with 4
    asked): the weight gradient's buffers are sized for the widest of 4 shares of the 40 input
    channels (16 rows), so the 2 threads' shares (24 and 16 rows) run in chunks of at most 16."""
    environment = dict(os.environ, OMP_THREAD_LIMIT="2")
    result = subprocess.run([sys.executable, "-c", WINOGRAD_TEAM_SCRIPT], env=environment, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_winograd_rows_plan():
    """Which float32 forwards run Winograd along the rows: a 7-wide, stride-2, undilated kernel
    (any height, stride and dilation down the columns) with at least 8 reduction terms (input
    channels a group times kernel rows) and 8 output channels a group, on the register kernel."""
    extension = conv_ops.cpu_module("conv")

    def plan(batch, channels, size, out_channels, kernel=(7, 7), stride=(2, 2), padding=(3, 3), dilation=(1, 1),
             groups=1):
        out = [(size + 2 * p - d * (k - 1) - 1) // s + 1 for k, s, p, d in zip(kernel, stride, padding, dilation)]
        return extension.forward_winograd_rows(batch, channels, size, size, out_channels, *kernel, *out, *stride,
                                               *padding, *dilation, groups)

    kernel_path = extension.REGISTER_KERNEL
    assert plan(8, 3, 224, 64) == kernel_path                          # ResNet's stem
    assert plan(1, 2, 9, 8) == kernel_path                             # 14 terms
    assert plan(2, 6, 20, 16, groups=2) == kernel_path                 # 3 channels a group
    assert plan(2, 3, 20, 8, kernel=(3, 7), stride=(3, 2), padding=(1, 3), dilation=(2, 1)) == kernel_path
    assert plan(8, 1, 64, 16) == 0                                     # 7 terms
    assert plan(8, 3, 64, 16, kernel=(1, 7), padding=(0, 3)) == 0     # 3 terms
    assert plan(8, 3, 64, 4) == 0                                      # fewer outputs than a register block
    assert plan(8, 3, 64, 16, stride=(2, 1)) == 0
    assert plan(8, 3, 64, 16, kernel=(5, 5), padding=(2, 2)) == 0
    assert plan(8, 3, 64, 16, dilation=(1, 2), padding=(3, 6)) == 0
    previous = extension.set_winograd(False)
    try:
        assert plan(8, 3, 224, 64) == 0
    finally:
        extension.set_winograd(previous)


# (batch, in_channels, height, width, out_channels, kernel_h, stride_h, padding (h, w),
# dilation_h, groups); kernels 7 wide at stride 2 along the rows
WINOGRAD_ROWS_GEOMETRIES = {
    # the stem at 112 x 112: 56 x 56 outputs, 14 tiles of 4 a row, blocks of 128 tiles across rows
    "stem": (1, 3, 112, 112, 64, 7, 2, (3, 3), 1, 1),
    # output widths 17 and 19: the last tile of a row one and three quarters used
    "width-17": (2, 3, 21, 33, 16, 7, 2, (3, 3), 1, 1),
    "width-19": (2, 3, 21, 37, 16, 7, 2, (3, 3), 1, 1),
    # no padding (12 outputs from 30: the spans end inside the image), and padding 5 on the left
    # (a tile's span starting 5 columns before the image)
    "valid": (3, 3, 19, 30, 8, 7, 2, (0, 0), 1, 1),
    "padding-1-5": (2, 3, 16, 16, 8, 7, 2, (1, 5), 1, 1),
    # other kernel heights, strides and dilations down the columns
    "rows-5-stride-1-dilation-2": (2, 4, 15, 27, 12, 5, 1, (4, 3), 2, 1),
    "rows-3-stride-3": (2, 3, 23, 25, 8, 3, 3, (1, 2), 1, 1),
    # two groups of 3 input and 8 output channels
    "groups": (2, 6, 17, 40, 16, 7, 2, (3, 3), 1, 2),
    # 20 tiles a row (16 + 4 in the vector steps), 77 outputs
    "wide-rows": (1, 3, 9, 153, 8, 7, 2, (3, 3), 1, 1),
    # one output a sample
    "one-pixel": (3, 3, 1, 1, 8, 7, 2, (3, 3), 1, 1),
    # 600 output channels: blocks of 32 tiles; and 448 reduction terms: the GEMMs' reduction in
    # four blocks of the register kernel
    "many-outputs": (2, 3, 20, 20, 600, 7, 2, (3, 3), 1, 1),
    "many-terms": (1, 64, 14, 14, 16, 7, 2, (3, 3), 1, 1),
}


@pytest.mark.parametrize("name", list(WINOGRAD_ROWS_GEOMETRIES))
def test_winograd_rows_matches_torch_and_the_direct_forward(name):
    """The forward by Winograd along the rows against torch (float64) and against the same call
    without it (every gradient too, which do not take it), and the same bits on 1, 2, 3 and 5
    threads."""
    extension = conv_ops.cpu_module("conv")
    batch, c_in, height, width, c_out, kernel_h, stride_h, padding, dilation_h, groups = WINOGRAD_ROWS_GEOMETRIES[name]
    out_height = (height + 2 * padding[0] - dilation_h * (kernel_h - 1) - 1) // stride_h + 1
    out_width = (width + 2 * padding[1] - 7) // 2 + 1
    assert extension.forward_winograd_rows(batch, c_in, height, width, c_out, kernel_h, 7, out_height, out_width,
                                           stride_h, 2, padding[0], padding[1], dilation_h, 1,
                                           groups) == extension.REGISTER_KERNEL
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(batch, c_in, height, width, generator=generator, dtype=torch.float64)
    w = torch.randn(c_out, c_in // groups, kernel_h, 7, generator=generator, dtype=torch.float64)
    b = torch.randn(c_out, generator=generator, dtype=torch.float64)
    check_winograd(extension, x, w, b, bitwise=1, stride=(stride_h, 2), padding=padding, dilation=(dilation_h, 1),
                   groups=groups)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts_agree_and_repeat_bitwise(threads):
    """Any thread count gives the right answer; for one count, two runs agree to the bit."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for name in ("small-image-spread", "groups-16", "stem", "flipped-5x5-pad1-groups", "weight-channel-split"):
            first = check(CASES[name])
            second, _ = reference_and_ours(CASES[name])
            for a, b in zip(first, second):
                assert torch.equal(a, b), name
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("name", ["1x1-wide-weight-chunks", "1x1-wide-weight-samples"])
def test_wide_weight_gradient_does_not_depend_on_the_thread_count(name):
    """The wide weight gradient gives each thread whole columns of grad_w, every element summed
    over the samples and pixels in one order: the same bits on 1, 2 and 3 threads."""
    gradients = on_threads((1, 2, 3), lambda: check(CASES[name])[2])
    if conv_ops.cpu_module("conv").REGISTER_KERNEL:
        assert torch.equal(gradients[0], gradients[1]) and torch.equal(gradients[0], gradients[2])
    else:  # the BLAS fallback (no AVX-512) splits the sum by threads
        assert torch.allclose(gradients[0], gradients[1], rtol=1e-5, atol=1e-5)
        assert torch.allclose(gradients[0], gradients[2], rtol=1e-5, atol=1e-5)


def test_forward_does_not_depend_on_the_tiling():
    """The register kernel sums each output over the reduction in one fixed order, so the
    forward is the same to the bit whatever the tiles (the thread split moves tile edges)."""
    extension = conv_ops.cpu_module("conv")
    case = CASES["small-image-spread"]
    outputs = []
    for budget in [(600, 1), (1 << 20, 32)]:
        previous = extension.set_tile_budget(*budget)
        try:
            outputs.append(reference_and_ours(case)[0][0])
        finally:
            extension.set_tile_budget(*previous)
    if extension.REGISTER_KERNEL:
        assert np.array_equal(outputs[0].numpy(), outputs[1].numpy())
    else:  # the BLAS fallback (no AVX-512) may sum in a tile-dependent order
        assert torch.allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
