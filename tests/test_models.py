"""The classic networks of ``gatedrnn.models``: ResNet-18/34 against torchvision's recorded
state-dict layout and against the same network built from torch.nn layers (forward, every
gradient, train and eval mode, each CPU backend), the backend reaching every layer, and the small
CNN learning.

Sizes are chosen for a 2-core CI budget: the ResNet-18 parity runs at 2x3x64x64 on every
backend (about 2 s on the float64 numpy oracle). Smaller inputs leave layer4 at 1x1, where
train-mode BatchNorm normalises 2 values per channel and float32 rounding differences grow to
1e-2; at 64x64 it sees 8 and the worst gradient agrees to about 1e-5.
"""
import ast
import pathlib

import pytest
import torch
from torch import nn

import gatedrnn
import gatedrnn.nn as gnn
from gatedrnn.models.cnn import SmallCNN
from gatedrnn.models.resnet import BasicBlock, ResNet, resnet18, resnet34
from gatedrnn.ops import conv as conv_ops
from gatedrnn.ops import pool as pool_ops

from interpreter import INTERPRETING as INTERPRETING_TRITON, outside_interpreter, run_interpreted
from spatial_checks import cpu_backends

DATA = pathlib.Path(__file__).parent / "data"
BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
CONSTRUCTORS = {"resnet18": resnet18, "resnet34": resnet34}
GATEDRNN_LAYERS = (gnn.Conv2d, gnn.MaxPool2d, gnn.AvgPool2d, gnn.AdaptiveAvgPool2d)
TORCH_SPATIAL_LAYERS = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
# Norm-wise relative error allowed between float32 networks that differ only in the order of
# their sums: ~1e-6 per layer, grown through 18 layers and BatchNorm's division by small stds.
FLOAT32_TOLERANCE = 1e-4

CPU_BACKENDS = [b for b in cpu_backends("conv") if b in cpu_backends("pool")]


# --- an independent torch.nn ResNet: the reference for names, shapes and numbers ----------------

class ReferenceBlock(nn.Module):
    """torchvision's BasicBlock layout from torch.nn layers only."""

    def __init__(self, in_channels, channels, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(channels))

    def forward(self, x):
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + skip)


class ReferenceResNet(nn.Module):
    def __init__(self, blocks_per_stage, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels = 64
        for index, (channels, count) in enumerate(zip((64, 128, 256, 512), blocks_per_stage)):
            stride = 1 if index == 0 else 2
            stage = [ReferenceBlock(in_channels, channels, stride)]
            stage += [ReferenceBlock(channels, channels, 1) for _ in range(count - 1)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
            in_channels = channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def recorded_keys(name):
    """[(key, shape)] of torchvision's ``name`` state dict, in order."""
    entries = []
    for line in (DATA / f"{name}_state_dict_keys.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split(" ", 1)
            entries.append((key, tuple(ast.literal_eval(shape))))
    return entries


def keys_and_shapes(module):
    return [(key, tuple(value.shape)) for key, value in module.state_dict().items()]


def relative_error(actual, expected):
    actual, expected = actual.detach().double(), expected.detach().double()
    assert actual.shape == expected.shape
    assert torch.isfinite(actual).all()
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-30))


def twin_networks(backend, num_classes=10, device="cpu"):
    """(our ResNet-18 on ``backend``, the torch.nn reference holding the same weights)."""
    torch.manual_seed(0)
    ours = resnet18(num_classes=num_classes, backend=backend).to(device)
    reference = ReferenceResNet(BLOCKS["resnet18"], num_classes).to(device)
    reference.load_state_dict(ours.state_dict(), strict=True)
    return ours, reference


# --- layout --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_state_dict_matches_torchvision_layout(name):
    expected = recorded_keys(name)
    assert keys_and_shapes(CONSTRUCTORS[name]()) == expected
    # The recorded list was written from torchvision's source: the independent reference agrees.
    assert keys_and_shapes(ReferenceResNet(BLOCKS[name])) == expected


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_state_dict_loads_strictly_both_ways(name):
    ours, reference = CONSTRUCTORS[name](num_classes=7), ReferenceResNet(BLOCKS[name], 7)
    ours.load_state_dict(reference.state_dict(), strict=True)
    reference.load_state_dict(ours.state_dict(), strict=True)
    for key, value in reference.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key


def test_module_structure_and_init():
    model = resnet18()
    assert isinstance(model, ResNet)
    assert [name for name, _ in model.named_children()] == [
        "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]
    block = model.layer2[0]
    assert isinstance(block, BasicBlock) and block.stride == 2
    assert [name for name, _ in block.named_children()] == ["conv1", "bn1", "relu", "conv2", "bn2", "downsample"]
    assert isinstance(block.downsample[0], gnn.Conv2d) and block.downsample[0].kernel_size == (1, 1)
    assert model.layer1[0].downsample is None and model.layer2[1].downsample is None
    assert model.fc.out_features == 1000
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    # kaiming_normal_(fan_out, relu): std = sqrt(2 / (out_channels * kh * kw)).
    weight = model.layer3[0].conv1.weight
    expected_std = (2.0 / (weight.shape[0] * 9)) ** 0.5
    assert abs(weight.std().item() / expected_std - 1) < 0.05
    assert abs(weight.mean().item()) < 0.1 * expected_std
    zeroed = resnet18(zero_init_residual=True)
    assert all(torch.all(m.bn2.weight == 0) for m in zeroed.modules() if isinstance(m, BasicBlock))


# --- backend propagation -------------------------------------------------------------------------

def spatial_layers(model):
    layers = [m for m in model.modules() if isinstance(m, TORCH_SPATIAL_LAYERS)]
    # Every convolution and pooling layer is one of ours (they subclass torch's).
    assert all(isinstance(m, GATEDRNN_LAYERS) for m in layers)
    return layers


@pytest.mark.parametrize("backend", [None, "numpy", "cython", "triton"])
def test_backend_reaches_every_layer(backend):
    resnet_layers = spatial_layers(resnet18(backend=backend))
    assert len(resnet_layers) == 20 + 2  # 17 3x3/7x7 + 3 downsample convolutions, max pool, avg pool
    cnn_layers = spatial_layers(SmallCNN(3, backend=backend))
    assert len(cnn_layers) == 4 + 2 + 1
    assert all(m.backend == backend for m in resnet_layers + cnn_layers)


def record_dispatch(monkeypatch):
    """Patch the conv and pool ops' backend choice to record the backend each call runs on."""
    chosen = []

    def recording(original):
        def pick(backend, dtype, device):
            chosen.append(original(backend, dtype, device))
            return chosen[-1]
        return pick

    monkeypatch.setattr(conv_ops, "pick_backend", recording(conv_ops.pick_backend))
    monkeypatch.setattr(pool_ops, "pick_backend", recording(pool_ops.pick_backend))
    return chosen


# --- numerical parity with the torch.nn network ----------------------------------------------------

PARITY_CASES = [pytest.param(b, (2, 3, 64, 64), "cpu", id=b) for b in CPU_BACKENDS]
# The whole network on Triton needs a GPU: under the interpreter it takes ~4 min even at 32x32
# on 2 cores, so the interpreter checks the building blocks below instead.
PARITY_CASES.append(pytest.param("triton", (2, 3, 64, 64), "cuda", id="triton", marks=pytest.mark.gpu))


@pytest.mark.parametrize("backend, shape, device", PARITY_CASES)
def test_resnet18_matches_torch_nn(backend, shape, device, monkeypatch):
    ours, reference = twin_networks(backend, device=device)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=generator).to(device)
    # A random projection of the logits: every output (and so every weight) gets a distinct gradient.
    projection = torch.randn(shape[0], 10, generator=generator).to(device)
    x_ours, x_reference = x.clone().requires_grad_(), x.clone().requires_grad_()

    # A different ambient backend: the model's own backend= must win on every call.
    chosen = record_dispatch(monkeypatch)
    with gatedrnn.use_backend("numpy" if backend != "numpy" else "cython"):
        out = ours(x_ours)
        (out * projection).sum().backward()
    assert set(chosen) == {backend} and len(chosen) == 20 + 2
    with torch.backends.cudnn.flags(allow_tf32=False):  # a float32 reference on CUDA, not TF32
        expected = reference(x_reference)
        (expected * projection).sum().backward()

    errors = {"output": relative_error(out, expected),
              "input.grad": relative_error(x_ours.grad, x_reference.grad)}
    reference_parameters = dict(reference.named_parameters())
    for name, parameter in ours.named_parameters():
        errors[f"{name}.grad"] = relative_error(parameter.grad, reference_parameters[name].grad)
    # Train mode updated BatchNorm's running statistics from the same batch statistics.
    reference_buffers = dict(reference.named_buffers())
    for name, buffer in ours.named_buffers():
        if buffer.is_floating_point():
            errors[name] = relative_error(buffer, reference_buffers[name])
        else:
            assert torch.equal(buffer, reference_buffers[name]), name
    assert len(errors) == 2 + 62 + 40  # output, input grad, 62 parameter gradients, 40 running stats
    worst = max(errors, key=errors.get)
    assert errors[worst] <= FLOAT32_TOLERANCE, f"{worst}: relative error {errors[worst]:.2e}"

    # Eval mode: BatchNorm uses the running statistics, so outputs match per sample.
    ours.eval(), reference.eval()
    with torch.no_grad(), torch.backends.cudnn.flags(allow_tf32=False):
        eval_out, eval_expected = ours(x), reference(x)
        assert relative_error(eval_out, eval_expected) <= FLOAT32_TOLERANCE
        assert relative_error(ours(x[:1]), eval_expected[:1]) <= FLOAT32_TOLERANCE
        assert not torch.allclose(eval_out, out.detach(), rtol=1e-3, atol=1e-3)


@pytest.mark.skipif("cython" not in CPU_BACKENDS, reason="gatedrnn._cpu conv/pool not built")
def test_train_and_eval_mode():
    ours, reference = twin_networks("cython")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))

    def stats(model):  # BatchNorm's running statistics and step counts
        return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "batches" in k}

    before = stats(ours)
    with torch.no_grad():
        train_out = ours(x)
    after_train = stats(ours)
    assert all(not torch.equal(before[k], after_train[k]) for k in before)
    ours.eval()
    with torch.no_grad():
        eval_out, eval_again = ours(x), ours(x)
    assert torch.equal(eval_out, eval_again)  # deterministic, and no statistics update
    assert all(torch.equal(after_train[k], v) for k, v in stats(ours).items())
    assert not torch.allclose(eval_out, train_out, rtol=1e-3, atol=1e-3)
    # Eval output of one sample does not depend on the rest of the batch.
    with torch.no_grad():
        assert relative_error(ours(x[2:3]), eval_out[2:3]) <= FLOAT32_TOLERANCE
    assert not ours.training and all(not m.training for m in ours.modules())
    ours.train()
    assert all(m.training for m in ours.modules())


# --- triton under the interpreter: the building blocks -------------------------------------------
# Triton picks the interpreter when the kernels are imported, so these run in a subprocess with
# TRITON_INTERPRET=1 (the outer test below); in that subprocess they run directly.

@pytest.mark.skipif(not INTERPRETING_TRITON, reason="runs inside the TRITON_INTERPRET=1 subprocess")
def test_interpreted_basic_block_matches_torch_nn():
    """A downsampling BasicBlock (3x3/2, 3x3, 1x1/2 + BatchNorm, train mode) on triton against
    the torch.nn block with the same weights: output, input and every weight gradient."""
    torch.manual_seed(3)
    downsample = nn.Sequential(gnn.Conv2d(8, 16, 1, 2, bias=False, backend="triton"), nn.BatchNorm2d(16))
    ours = BasicBlock(8, 16, 2, downsample, backend="triton")
    reference = ReferenceBlock(8, 16, 2)
    reference.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(3, 8, 11, 9)
    projection = torch.randn(3, 16, 6, 5)
    x_ours, x_reference = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = ours(x_ours), reference(x_reference)
    (out * projection).sum().backward()
    (expected * projection).sum().backward()
    errors = {"output": relative_error(out, expected), "input.grad": relative_error(x_ours.grad, x_reference.grad)}
    reference_parameters = dict(reference.named_parameters())
    for name, parameter in ours.named_parameters():
        errors[f"{name}.grad"] = relative_error(parameter.grad, reference_parameters[name].grad)
    assert len(errors) == 2 + 9
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-5, f"{worst}: relative error {errors[worst]:.2e}"


@pytest.mark.skipif(not INTERPRETING_TRITON, reason="runs inside the TRITON_INTERPRET=1 subprocess")
def test_interpreted_small_cnn_matches_numpy_backend():
    """SmallCNN (conv, max-pool, adaptive pool) on triton against the same weights on the float64
    oracle backend, eval mode (dropout off), forward and every gradient."""
    torch.manual_seed(4)
    ours = SmallCNN(3, num_classes=5, widths=(8, 16), backend="triton").eval()
    oracle_twin = SmallCNN(3, num_classes=5, widths=(8, 16), backend="numpy").eval()
    oracle_twin.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 17, 15)
    out, expected = ours(x), oracle_twin(x)
    projection = torch.randn_like(out)
    (out * projection).sum().backward()
    (expected * projection).sum().backward()
    assert relative_error(out, expected) <= 1e-5
    twin_parameters = dict(oracle_twin.named_parameters())
    for name, parameter in ours.named_parameters():
        error = relative_error(parameter.grad, twin_parameters[name].grad)
        assert error <= 1e-5, f"{name}.grad: relative error {error:.2e}"


@outside_interpreter
def test_triton_interpreter_subprocess():
    """The two interpreted cases above (~25 s on 2 cores)."""
    run_interpreted(__file__, "interpreted", timeout=600)


# --- the small CNN ------------------------------------------------------------------------------

@pytest.mark.parametrize("in_channels, size", [(1, 28), (3, 32)], ids=["1x28x28", "3x32x32"])
def test_small_cnn_learns(in_channels, size):
    torch.manual_seed(0)
    model = SmallCNN(in_channels, num_classes=10, widths=(8, 16))
    images = torch.randn(16, in_channels, size, size)
    labels = torch.randint(0, 10, (16,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0], losses
    model.eval()
    with torch.no_grad():
        logits = model(images)
    assert logits.shape == (16, 10)
    assert torch.equal(logits, model(images).detach())  # eval: dropout off, running statistics


def test_small_cnn_shapes_and_arguments():
    assert SmallCNN(3, num_classes=100)(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert SmallCNN(1, widths=(4, 8, 16))(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="widths"):
        SmallCNN(1, widths=())


# --- a real torchvision state dict (GPU machines, where torchvision is installed) ------------------

@pytest.mark.gpu
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_loads_torchvision_resnet18(device):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    theirs = torchvision.models.resnet18().to(device)
    # On CUDA the Triton kernels; on the CPU the numpy oracle, which runs without the compiled
    # extensions (built per machine).
    backend = "triton" if device == "cuda" else "numpy"
    assert keys_and_shapes(theirs) == recorded_keys("resnet18")
    ours = resnet18(backend=backend).to(device)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64, device=device)
    ours.eval(), theirs.eval()
    with torch.no_grad(), torch.backends.cudnn.flags(allow_tf32=False):
        assert relative_error(ours(x), theirs(x)) <= FLOAT32_TOLERANCE
    theirs.load_state_dict(resnet18().state_dict(), strict=True)  # and the other way round
