"""The ``gatedrnn`` command line: ``info``, ``train``, ``bench`` and ``gradients``.

    gatedrnn info                      # versions, backends (and why one does not run), devices
    gatedrnn train                     # a character-level LSTM on Python's standard library
    gatedrnn bench rnn --plot b.png    # the perf/ benchmarks as one table
    gatedrnn gradients --plot g.png    # ||dL/dx_t|| against distance t: Elman RNN vs LSTM vs GRU

Also ``python -m gatedrnn``. Each subcommand has ``--help``.
"""
from __future__ import annotations

import argparse
import copy
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import sys
import sysconfig
import tempfile
import time
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

import gatedrnn
from gatedrnn.backends import resolve_backend

PLOT_INSTALL_HINT = "pip install 'gatedrnn[plot]'"
# perf/ is part of the source tree, not of the installed package: found next to gatedrnn/.
PERF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "perf")


# train's default --time-budget (seconds): the README's run takes 20-30 s on 2 cores; the budget
# keeps a slower or busier machine near a minute.
TRAIN_TIME_BUDGET = 75.0


class CommandError(Exception):
    """A user-facing failure: printed as ``gatedrnn <command>: error: ...``, exit status 2."""


def _pyplot():
    """matplotlib.pyplot on the Agg backend, or a CommandError naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise CommandError(f"--plot needs matplotlib, which is not installed. Fix: {PLOT_INSTALL_HINT}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _progress(iterable, **kwargs):
    """tqdm's progress bar (a runtime dependency); a plain iterator if it is missing."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a declared dependency
        return iterable
    return tqdm(iterable, **kwargs)


def _device(name: Optional[str]) -> torch.device:
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise CommandError(f"--device: expected cpu, cuda, cuda:N or auto, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CommandError(f"--device {name}: no CUDA device is visible here (use --device cpu)")
    return device


def _backend(option: Optional[str], device: torch.device) -> str:
    """The backend a command's ops will run on (--backend, else GATEDRNN_BACKEND, else the
    device's), checked to run on ``device`` here: a CommandError naming the fix, not a traceback
    from the first op."""
    try:
        return resolve_backend(option, device)
    except (TypeError, ValueError, RuntimeError) as error:
        source = f"--backend {option}" if option else "the backend (GATEDRNN_BACKEND or automatic)"
        raise CommandError(f"{source}: {error}") from None


def _at_least(args, minimum: int, *names: str) -> None:
    """CommandError unless each --option (an int attribute; None: not given) is >= minimum."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise CommandError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


def _positive(args, *names: str, allow_zero: bool = False) -> None:
    """CommandError unless each --option (an int or float attribute) is a finite number > 0
    (>= 0 with ``allow_zero``): checked before any work, not found by torch after it."""
    for name in names:
        value = getattr(args, name)
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise CommandError(f"--{name.replace('_', '-')} must be a finite number {bound}, got {value}")


def _output_path(path: Optional[str], option: str, create_directory: bool = False) -> None:
    """CommandError unless ``path`` can be written (a file in an existing, writable directory;
    ``create_directory``: one that can be made): checked before the run, not after it."""
    if not path:
        return
    if os.path.isdir(path) or path.endswith(os.sep):
        raise CommandError(f"{option} {path}: a file name is needed, not a directory")
    directory = os.path.dirname(os.path.abspath(path))
    if create_directory:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as error:
            raise CommandError(f"{option} {path}: cannot create {directory}: {error.strerror}") from None
    if not os.path.isdir(directory):
        raise CommandError(f"{option} {path}: the directory {directory} does not exist")
    try:  # a real probe: os.access says yes to root everywhere, /proc included
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise CommandError(f"{option} {path}: cannot write in {directory}: {error.strerror}") from None


# ---------------------------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------------------------

def _cython_build() -> str:
    """Which compiled extensions are importable, and the Cython that built them when known."""
    try:
        import Cython

        cython_version = f"Cython {Cython.__version__} installed"
    except ImportError:
        cython_version = "Cython not installed (not needed at run time)"
    built = []
    for name in ("lstm", "gru", "rnn", "conv", "pool", "embedding"):
        spec = importlib.util.find_spec(f"gatedrnn._cpu.{name}")
        if spec is not None and spec.origin and not spec.origin.endswith(".py"):
            built.append(name)
    extensions = ", ".join(built) if built else "none built"
    return f"extensions: {extensions}; {cython_version}"


def command_info(args) -> int:
    print(f"gatedrnn   {gatedrnn.__version__} ({os.path.dirname(os.path.abspath(gatedrnn.__file__))})")
    print(f"python     {platform.python_version()} ({sys.executable})")
    print(f"torch      {torch.__version__}")
    triton_version = None
    if importlib.util.find_spec("triton") is not None:
        try:
            triton_version = importlib.metadata.version("triton")
        except importlib.metadata.PackageNotFoundError:
            triton_version = "installed (version unknown)"
    print(f"triton     {triton_version or 'not installed'}")
    print(f"cython     {_cython_build()}")
    print()
    print("backends (a call's backend: backend= argument, else `with gatedrnn.use_backend(..)`, "
          "else GATEDRNN_BACKEND, else CUDA tensors -> triton, CPU tensors -> cython):")
    for name, status in gatedrnn.available_backends().items():
        mark = "yes" if status.available else "no "
        print(f"  {name:<7} {mark}  {status.reason}")
    try:
        forced = gatedrnn.current_backend()
    except ValueError as error:  # what info is for: report it, do not crash on it
        print(f"  (GATEDRNN_BACKEND is invalid: {error})")
    else:
        if forced:
            print(f"  (GATEDRNN_BACKEND forces {forced!r})")
    print()
    print("devices:")
    print(f"  cpu     {_cpu_name()}, {os.cpu_count()} logical CPUs; torch threads {torch.get_num_threads()}")
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            print(f"  cuda:{index}  {props.name}, {props.total_memory / 2**30:.0f} GiB, "
                  f"compute capability {props.major}.{props.minor}")
    else:
        print("  cuda    none visible")
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------

def stdlib_corpus(max_chars: int = 400_000) -> str:
    """Source of Python's own standard library, read from the running interpreter.

    Deterministic for a given interpreter: the top-level public modules (``*.py`` not starting
    with ``_``) between 4 and 60 KB, in sorted order, concatenated until ``max_chars``. Size
    bounds keep one huge module from making up the whole corpus.
    """
    directory = sysconfig.get_paths()["stdlib"]
    pieces, total = [], 0
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if not name.endswith(".py") or name.startswith("_") or not os.path.isfile(path):
            continue
        if not 4_000 <= os.path.getsize(path) <= 60_000:
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        pieces.append(text)
        total += len(text)
        if total >= max_chars:
            break
    if total == 0:
        raise CommandError(f"no standard-library sources found under {directory}; pass --text FILE")
    return "".join(pieces)[:max_chars]


class CharData:
    """A text as token ids, split into training (first 90%) and validation (last 10%) parts."""

    def __init__(self, text: str, validation_fraction: float = 0.1) -> None:
        if len(text) < 1000:
            raise CommandError(f"the text has {len(text)} characters; need at least 1000")
        self.characters = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.characters)}
        ids = torch.tensor([self.index[c] for c in text], dtype=torch.int64)
        split = int(len(ids) * (1 - validation_fraction))
        self.train, self.validation = ids[:split], ids[split:]

    @property
    def vocab_size(self) -> int:
        return len(self.characters)

    def decode(self, ids) -> str:
        return "".join(self.characters[i] for i in ids)

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor([self.index[c] for c in text if c in self.index], dtype=torch.int64)

    def unigram_loss(self) -> float:
        """Cross-entropy (nats/char) of the validation text under the training text's character
        frequencies (add-one smoothed): what a model that ignores context achieves."""
        counts = torch.bincount(self.train, minlength=self.vocab_size).double() + 1
        log_probabilities = (counts / counts.sum()).log()
        return float(-log_probabilities[self.validation].mean())

    def batch(self, batch_size: int, seq_len: int, generator: torch.Generator):
        """Random windows: inputs (B, T) and next-character targets (B, T)."""
        starts = torch.randint(0, len(self.train) - seq_len - 1, (batch_size,), generator=generator)
        offsets = torch.arange(seq_len + 1)
        windows = self.train[starts.unsqueeze(1) + offsets]
        return windows[:, :-1], windows[:, 1:]


@torch.no_grad()
def evaluate(model, tokens: torch.Tensor, seq_len: int, device, max_chars: int = 40_000) -> float:
    """Mean next-character cross-entropy (nats) over ``tokens`` (first ``max_chars``), in
    consecutive windows of ``seq_len`` run as one batch (each window starts from a zero state)."""
    was_training = model.training
    model.eval()
    tokens = tokens[: max_chars + 1]
    windows = (len(tokens) - 1) // seq_len
    if windows < 1:
        raise CommandError("the validation text is shorter than one sequence; use a longer --text or --seq-len")
    inputs = tokens[: windows * seq_len].view(windows, seq_len).to(device)
    targets = tokens[1: windows * seq_len + 1].view(windows, seq_len).to(device)
    total = 0.0
    for start in range(0, windows, 256):
        logits, _ = model(inputs[start:start + 256])
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[start:start + 256].reshape(-1),
                                       reduction="sum"))
    model.train(was_training)
    return total / targets.numel()


def train_language_model(model, data: CharData, args, device, generator_seed: int, label: str, quiet: bool,
                         steps: int, time_budget: float = 0.0):
    """Up to ``steps`` Adam steps on random windows, stopping early once ``time_budget`` seconds
    (if > 0) have passed; returns (losses, tokens per second).

    tokens/s counts every step after the first (which pays one-time set-up costs).
    """
    generator = torch.Generator().manual_seed(generator_seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    model.train()
    losses: List[float] = []
    tokens_per_step = args.batch * args.seq_len
    started = None
    clock_start = time.perf_counter()
    bar = _progress(range(steps), desc=label, unit="step", disable=quiet, dynamic_ncols=True, file=sys.stderr)
    for step in bar:
        if time_budget > 0 and step > 0 and time.perf_counter() - clock_start > time_budget:
            break
        if step == 1:
            started = time.perf_counter()
        inputs, targets = data.batch(args.batch, args.seq_len, generator)
        inputs, targets = inputs.to(device), targets.to(device)
        logits, _ = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, data.vocab_size), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        losses.append(float(loss.detach()))
        if started is not None and hasattr(bar, "set_postfix"):
            if device.type == "cuda":
                torch.cuda.synchronize()
            rate = tokens_per_step * step / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", tok_s=f"{rate:,.0f}", refresh=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    if hasattr(bar, "close"):
        bar.close()
    elapsed = time.perf_counter() - started if started is not None else float("nan")
    rate = tokens_per_step * (len(losses) - 1) / elapsed if len(losses) > 1 else float("nan")
    return losses, rate


def command_train(args) -> int:
    from .models.sequence import CharLanguageModel

    device = _device(args.device)
    used_backend = _backend(args.backend, device)
    _at_least(args, 1, "steps", "batch", "seq_len", "hidden_size", "layers", "embedding_dim", "max_chars")
    _positive(args, "lr")
    _positive(args, "clip", "time_budget", "sample", "temperature", allow_zero=True)
    if not 0 <= args.dropout < 1:
        raise CommandError(f"--dropout must lie in [0, 1), got {args.dropout}")
    if args.text:
        try:
            with open(args.text, encoding="utf-8", errors="replace") as f:
                text, source = f.read(), args.text
        except OSError as error:
            raise CommandError(f"--text: cannot read {args.text}: {error.strerror}") from None
    else:
        text = stdlib_corpus(args.max_chars)
        source = f"Python {platform.python_version()} standard library sources ({sysconfig.get_paths()['stdlib']})"
    text = text[: args.max_chars]
    data = CharData(text)
    if len(data.train) <= args.seq_len + 1:
        raise CommandError(f"the training text ({len(data.train)} characters) is shorter than --seq-len")
    if len(data.validation) <= args.seq_len:
        raise CommandError(f"the validation text ({len(data.validation)} characters, the last tenth) is shorter "
                           f"than one sequence of --seq-len {args.seq_len}")
    _output_path(args.save, "--save", create_directory=True)  # (after every other check: it may create)
    print(f"corpus: {source}: {len(text):,} characters, vocabulary {data.vocab_size}; "
          f"train {len(data.train):,} / validation {len(data.validation):,}")

    config = dict(vocab_size=data.vocab_size, hidden_size=args.hidden_size, num_layers=args.layers,
                  cell=args.cell, dropout=args.dropout, embedding_dim=args.embedding_dim)
    torch.manual_seed(args.seed)
    model = CharLanguageModel(**config, backend=args.backend).to(device)
    initial_state = model.to_torch_state_dict()  # --compare-torch starts from the same weights
    parameters = sum(p.numel() for p in model.parameters())
    print(f"model: Embedding({data.vocab_size}, {model.config['embedding_dim']}) + {args.cell.upper()}"
          f"(hidden {args.hidden_size}, layers {args.layers}) + Linear: {parameters:,} parameters; "
          f"device {device}, backend {used_backend}, {torch.get_num_threads()} threads")
    budget = f" (at most {args.time_budget:g} s)" if args.time_budget > 0 else ""
    print(f"training: {args.steps} steps{budget} of {args.batch} x {args.seq_len} characters, Adam lr {args.lr}"
          + (f", gradient norm clipped to {args.clip}" if args.clip > 0 else ""))

    losses, rate = train_language_model(model, data, args, device, args.seed, "gatedrnn", args.quiet,
                                        args.steps, args.time_budget)
    if len(losses) < args.steps:
        why = ("this machine is slower or busier than expected; " if args.time_budget == TRAIN_TIME_BUDGET else "")
        print(f"stopped after {len(losses)} of {args.steps} steps: the --time-budget of {args.time_budget:g} s "
              f"ran out ({why}--time-budget 0 runs every step)")
    validation = evaluate(model, data.validation, args.seq_len, device)
    baseline = data.unigram_loss()
    tail = losses[-min(20, len(losses)):]
    print(f"train loss (last {len(tail)} steps) {sum(tail) / len(tail):.3f} nats; {rate:,.0f} tokens/s")
    print(f"validation loss {validation:.3f} nats = {validation / math.log(2):.3f} bits/char; "
          f"unigram baseline {baseline:.3f} nats = {baseline / math.log(2):.3f} bits/char "
          f"({'below' if validation < baseline else 'NOT below'} the baseline by "
          f"{abs(baseline - validation) / math.log(2):.2f} bits/char)")

    if args.sample > 0:
        prompt = data.encode(args.prompt)
        if len(prompt) == 0:
            prompt = data.train[:1]
        generator = torch.Generator().manual_seed(args.seed)
        sampled = model.sample(prompt.to(device), args.sample, args.temperature, generator)
        print(f"sample (temperature {args.temperature}):")
        print("-" * 60)
        print(data.decode(prompt.tolist()) + data.decode(sampled.tolist()))
        print("-" * 60)

    if args.compare_torch:
        from .models.sequence import torch_char_language_model

        reference = torch_char_language_model(**config).to(device)
        reference.load_state_dict(initial_state, strict=True)
        # The same steps (as many as gatedrnn ran) on the same batches, whatever the time they take.
        reference_losses, reference_rate = train_language_model(reference, data, args, device, args.seed,
                                                                "torch.nn", args.quiet, len(losses))
        reference_validation = evaluate(reference, data.validation, args.seq_len, device)
        print(f"compare: gatedrnn {rate:,.0f} tokens/s, torch.nn {reference_rate:,.0f} tokens/s, "
              f"ratio gatedrnn/torch.nn {rate / reference_rate:.2f}; validation loss gatedrnn {validation:.3f}, "
              f"torch.nn {reference_validation:.3f} nats")

    if args.save:
        torch.save(model.to_torch_state_dict(), args.save)
        with open(args.save + ".json", "w") as f:
            json.dump({"config": config, "characters": "".join(data.characters),
                       "validation_loss": validation, "unigram_loss": baseline}, f, indent=2)
        print(f"saved the state dict to {args.save} (torch.nn names: embedding.*, rnn.*, head.*) and the "
              f"configuration and vocabulary to {args.save}.json; load it with "
              "`import gatedrnn.models` and gatedrnn.models.torch_char_language_model(**config)"
              ".load_state_dict(torch.load(path))")
    return 0


# ---------------------------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------------------------

def _import_perf(name: str):
    """Import ``perf/<name>.py`` by path (perf/ is in the source tree, not the installed package)."""
    path = os.path.join(PERF_DIR, f"{name}.py")
    if not os.path.isfile(path):
        raise CommandError(f"the benchmarks live in the source tree ({path} is missing): run `gatedrnn bench` "
                           "from a checkout of gatedrnn installed with `pip install -e .`")
    if PERF_DIR not in sys.path:
        sys.path.insert(0, PERF_DIR)  # bench_rnn.py imports its sibling bench_rnn_gpu.py
    spec = importlib.util.spec_from_file_location(f"gatedrnn_perf_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there while being defined
    spec.loader.exec_module(module)
    return module


def _parse_configs(text: str):
    configs = []
    for item in text.split(";"):
        parts = [p for p in item.replace("x", ",").split(",") if p.strip()]
        try:
            triple = tuple(int(p) for p in parts)
        except ValueError:
            triple = ()
        if len(triple) != 3 or min(triple) < 1:
            raise CommandError(f"--configs: expected T,B,H triples of positive ints separated by ';', got {item!r}")
        configs.append(triple)
    return configs


def _bench_rnn_cpu(args):
    bench = _import_perf("bench_rnn")
    cells = [c.strip().lower() for c in args.cells.split(",") if c.strip()]
    unknown = [c for c in cells if c not in bench.CELLS]
    if unknown:
        raise CommandError(f"--cells: unknown {unknown}; choose from {bench.CELLS}")
    if args.configs:
        configs = _parse_configs(args.configs)
    else:
        configs = bench.QUICK_CONFIGS if args.quick else bench.CONFIGS
    repeats = args.repeats or (3 if args.quick else 7)
    warmup = 1 if args.quick and args.warmup is None else (2 if args.warmup is None else args.warmup)
    print(f"# gatedrnn {gatedrnn.__version__} ({args.backend}) vs torch.nn, CPU")
    print(f"# {bench.machine_description()}; median of {repeats} alternated runs")
    rows = []
    for cell in cells:
        for seq_len, batch, hidden_size in configs:
            new = bench.bench_cpu_config(cell, seq_len, batch, hidden_size, repeats, warmup, args.backend)
            for r in new:
                print(f"  {cell} T={seq_len} B={batch} H={hidden_size} {r.mode:9s}: torch {r.torch_ms:8.2f} ms"
                      f"  ours {r.ours_ms:8.2f} ms  ratio {r.ratio:5.2f}", flush=True)
            rows += new
    print()
    print(bench.format_table(rows))
    return bench, rows


def _plot_bench(rows, path: str, title: str) -> None:
    _pyplot()  # a CommandError naming the extra when matplotlib is missing
    labels = [f"{r.cell.upper()} T{r.seq_len} B{r.batch} H{r.hidden_size}\n{r.mode}" for r in rows]
    _import_perf("plotting").ratio_bars(labels, [r.ratio for r in rows], path, title,
                                        "torch.nn time / gatedrnn time (> 1: gatedrnn faster)",
                                        inches_per_bar=0.9, height=4.5, fontsize=8)


def _profile_one_run(args, directory: str, device) -> None:
    """A torch.profiler trace of one forward+backward of our LSTM (the first configuration)."""
    from torch.profiler import ProfilerActivity, profile

    os.makedirs(directory, exist_ok=True)
    seq_len, batch, hidden_size = _parse_configs(args.configs)[0] if args.configs else (100, 16, 256)
    cell = [c.strip().lower() for c in args.cells.split(",") if c.strip()][0]
    torch.manual_seed(0)
    module = getattr(gatedrnn.nn, cell.upper())(hidden_size, hidden_size, backend=args.backend).to(device)
    x = torch.randn(seq_len, batch, hidden_size, device=device, requires_grad=True)
    module(x)[0].sum().backward()  # warm-up outside the trace
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as profiler:
        module(x)[0].sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
    trace = os.path.join(directory, f"trace_{cell}_T{seq_len}_B{batch}_H{hidden_size}.json")
    profiler.export_chrome_trace(trace)
    sort_key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\nprofile of one {cell.upper()} forward+backward (T={seq_len}, B={batch}, H={hidden_size}, "
          f"backend {args.backend}): where the time went")
    print(profiler.key_averages().table(sort_by=sort_key, row_limit=10, max_name_column_width=40))
    print(f"Chrome trace written to {trace} (open in chrome://tracing or https://ui.perfetto.dev)")


def _suffixed(path: Optional[str], suffix: str) -> Optional[str]:
    """path with ``suffix`` before its extension (``figures.json`` -> ``figures_conv.json``)."""
    if not path:
        return path
    stem, extension = os.path.splitext(path)
    return f"{stem}{suffix}{extension}"


def _bench_conv(args, device) -> int:
    """perf/bench_conv.py: conv2d on the ResNet-18 layer shapes against torch (CPU: the cython
    backend against oneDNN; CUDA: triton against cuDNN), with the options that apply to it."""
    if args.cells != "lstm,gru,rnn" or args.configs or args.profile:
        raise CommandError("--cells, --configs and --profile apply to the rnn suite only")
    if args.plot:
        _pyplot()  # fail before the benchmark, not after it
    bench = _import_perf("bench_conv")
    argv = ["--quick"] if args.quick else []
    if args.repeats is not None:
        argv += ["--repeats", str(args.repeats)]
    if args.warmup is not None:
        argv += ["--warmup", str(args.warmup)]
    if device.type == "cuda":
        if args.backend not in (None, "triton"):
            raise CommandError(f"bench conv on CUDA times the triton backend, not {args.backend}")
        _backend("triton", device)
        argv.append("--gpu")
    else:
        argv += ["--backend", _backend(args.backend, device)]
    if args.network:
        argv.append("--network")
    if args.json:
        argv += ["--json", args.json]
    if args.plot:
        argv += ["--plot", args.plot]
    bench.main(argv)
    return 0


def _check_bench_options(args) -> None:
    """The options every suite shares, checked before any benchmark runs."""
    _at_least(args, 1, "repeats")
    _at_least(args, 0, "warmup")
    if args.configs:
        _parse_configs(args.configs)
    if args.suite == "conv" and (args.cells != "lstm,gru,rnn" or args.configs or args.profile):
        raise CommandError("--cells, --configs and --profile apply to the rnn suite only")
    if args.profile:
        try:
            os.makedirs(args.profile, exist_ok=True)
        except OSError as error:
            raise CommandError(f"--profile {args.profile}: cannot create it: {error.strerror}") from None
    for option in ("json", "plot"):
        _output_path(getattr(args, option), f"--{option}")
        _output_path(_suffixed(getattr(args, option), "_conv") if args.suite == "all" else None, f"--{option}")


def command_bench(args) -> int:
    _device(args.device)  # (checked before _check_bench_options may create --profile)
    _check_bench_options(args)
    suite = args.suite
    if suite == "conv":
        return _bench_conv(args, _device(args.device))
    if suite == "all":
        # the rnn suite, then the conv suite, whose --json/--plot files get a "_conv" suffix
        command_bench(argparse.Namespace(**dict(vars(args), suite="rnn")))
        conv_args = argparse.Namespace(**dict(vars(args), suite="conv", json=_suffixed(args.json, "_conv"),
                                              plot=_suffixed(args.plot, "_conv"), cells="lstm,gru,rnn",
                                              configs=None, profile=None))
        return _bench_conv(conv_args, _device(args.device))
    device = _device(args.device)
    args.backend = _backend(args.backend, device)
    if args.plot:
        _pyplot()  # fail before the benchmark, not after it
    if device.type == "cuda":
        # The GPU table (Triton vs cuDNN) is perf/bench_rnn_gpu.py's; it writes its own plot.
        gpu = _import_perf("bench_rnn_gpu")
        argv = (["--quick"] if args.quick else []) + (["--plot", args.plot] if args.plot else [])
        rows = gpu.main(argv)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"device": torch.cuda.get_device_name(0), "rows": rows}, f, indent=2, default=str)
        if args.profile:
            _profile_one_run(args, args.profile, device)
        return 0
    if args.backend == "cython" and not gatedrnn.available_backends()["cython"].available:
        raise CommandError(f"backend cython cannot run here: {gatedrnn.available_backends()['cython'].reason}")
    bench, rows = _bench_rnn_cpu(args)
    if args.json:
        from dataclasses import asdict

        with open(args.json, "w") as f:
            json.dump({"machine": bench.machine_description(), "torch": torch.__version__,
                       "gatedrnn": gatedrnn.__version__, "backend": args.backend,
                       "rows": [dict(asdict(r), ratio=r.ratio) for r in rows]}, f, indent=2)
        print(f"figures written to {args.json}")
    if args.plot:
        _plot_bench(rows, args.plot, f"gatedrnn ({args.backend}) vs torch.nn, CPU: {bench.machine_description()}")
    if args.profile:
        _profile_one_run(args, args.profile, device)
    return 0


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------

def _gradient_model(cell: str, hidden_size: int, input_size: int, num_classes: int, backend, nonlinearity="tanh"):
    """A one-layer recurrence + Linear read-out of the last step, in float64 (so that gradients
    of 1e-100 are still numbers, not float32 zeros)."""
    kwargs = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
    recurrent = getattr(gatedrnn.nn, cell.upper())(input_size, hidden_size, backend=backend, **kwargs)
    if cell in ("lstm", "gru"):
        # The forget-gate bias of Gers et al. (2000) / Jozefowicz et al. (2015): LSTM f and GRU z
        # (torch's convention: h' = (1 - z) n + z h, so z near 1 keeps the state) start near
        # sigmoid(2) = 0.88, the "remember by default" the seed's gating argument relies on.
        # torch's default (bias ~ 0, gate ~ 0.5) would halve the gradient at every step.
        with torch.no_grad():
            gate = 1  # LSTM gates (i, f, g, o) and GRU gates (r, z, n): row block 1 is f and z
            recurrent.bias_ih_l0[gate * hidden_size:(gate + 1) * hidden_size].fill_(2.0)
            recurrent.bias_hh_l0[gate * hidden_size:(gate + 1) * hidden_size].zero_()
    head = torch.nn.Linear(hidden_size, num_classes)
    return torch.nn.ModuleDict({"rnn": recurrent, "head": head}).double()


def _memory_task(batch: int, seq_len: int, input_size: int, num_classes: int, generator):
    """The class (one-hot in the first ``num_classes`` features) is shown at step 0 only; every
    later step is Gaussian noise; the loss reads the last step: a dependency over the whole length."""
    x = torch.randn(seq_len, batch, input_size, generator=generator, dtype=torch.float64) * 0.5
    labels = torch.randint(0, num_classes, (batch,), generator=generator)
    x[0, :, :num_classes] += 2.0 * F.one_hot(labels, num_classes).double()
    return x, labels


def _last_step_loss(model, x, labels):
    output, _ = model["rnn"](x)
    return F.cross_entropy(model["head"](output[-1]), labels)


def input_gradient_norms(model, x, labels) -> torch.Tensor:
    """||dL/dx_t|| for every t (norm over batch and features), L the last-step loss."""
    x = x.clone().requires_grad_()
    loss = _last_step_loss(model, x, labels)
    (grad,) = torch.autograd.grad(loss, x)
    return grad.flatten(1).norm(dim=1)


def decay_per_step(norms: torch.Tensor) -> float:
    """Geometric-mean factor by which ||dL/dx_t|| changes per step of distance from the loss,
    fitted (least squares on log10) over the steps whose gradient is not exactly 0."""
    seq_len = len(norms)
    distance = torch.arange(seq_len - 1, -1, -1, dtype=torch.float64)
    keep = norms > 0
    if keep.sum() < 2:
        return float("nan")
    d, y = distance[keep], norms[keep].double().log10()
    slope = ((d - d.mean()) * (y - y.mean())).sum() / ((d - d.mean()) ** 2).sum()
    return float(10 ** slope)


def _train_memory_task(model, steps, seq_len, batch, input_size, num_classes, lr, generator, clip):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        x, labels = _memory_task(batch, seq_len, input_size, num_classes, generator)
        loss = _last_step_loss(model, x, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def _clip_demo(args, generator) -> dict:
    """Exploding gradients: a relu Elman RNN whose recurrent matrix is ``args.explode_scale`` times
    an orthogonal one. Plain SGD with and without gradient-norm clipping, from the same start."""
    hidden_size, input_size, num_classes, seq_len = args.hidden_size, 8, 2, args.clip_seq_len
    torch.manual_seed(args.seed)
    start = _gradient_model("rnn", hidden_size, input_size, num_classes, args.backend, nonlinearity="relu")
    with torch.no_grad():
        orthogonal = torch.linalg.qr(torch.randn(hidden_size, hidden_size, generator=generator, dtype=torch.float64))[0]
        start["rnn"].weight_hh_l0.copy_(args.explode_scale * orthogonal)
    x, labels = _memory_task(args.batch, seq_len, input_size, num_classes, generator)
    norms_at_start = input_gradient_norms(start, x, labels)
    results = {"input_grad_norms": norms_at_start.tolist(), "growth_per_step": decay_per_step(norms_at_start)}
    for label, clip in (("no clipping", 0.0), (f"clip {args.clip}", args.clip)):
        model = copy.deepcopy(start)
        optimizer = torch.optim.SGD(model.parameters(), lr=args.clip_lr)
        history = []
        for _ in range(args.clip_steps):
            loss = _last_step_loss(model, x, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip > 0 else float("inf")))
            optimizer.step()
            history.append((float(loss.detach()), norm))
        results[label] = history
    return results


def command_gradients(args) -> int:
    cells = [c.strip().lower() for c in args.cells.split(",") if c.strip()]
    if any(c not in ("rnn", "lstm", "gru") for c in cells):
        raise CommandError(f"--cells: choose from rnn, lstm, gru; got {args.cells}")
    if not cells:
        raise CommandError("--cells: name at least one of rnn, lstm, gru")
    if args.seq_len < 2:
        raise CommandError("--seq-len must be >= 2")
    _at_least(args, 1, "hidden_size", "batch", "train_steps", "train_seq_len", "clip_seq_len", "clip_steps")
    _positive(args, "lr", "clip_lr", "explode_scale")
    _positive(args, "clip", allow_zero=True)
    _backend(args.backend, torch.device("cpu"))
    _output_path(args.json, "--json")
    _output_path(args.plot, "--plot")
    if args.plot:
        _pyplot()
    generator = torch.Generator().manual_seed(args.seed)
    input_size, num_classes = 8, 2
    names = {"rnn": "Elman RNN (tanh)", "lstm": "LSTM", "gru": "GRU"}
    print(f"||dL/dx_t|| for the last-step loss of a {args.seq_len}-step memory task (class shown at t=0 only), "
          f"hidden {args.hidden_size}, batch {args.batch}, float64, backend {args.backend or 'auto'}")
    print(f"training: {args.train_steps} Adam steps (lr {args.lr}) on {args.train_seq_len}-step sequences")
    curves, table = {}, []
    x_probe, labels_probe = _memory_task(args.batch, args.seq_len, input_size, num_classes, generator)
    for cell in cells:
        torch.manual_seed(args.seed)
        model = _gradient_model(cell, args.hidden_size, input_size, num_classes, args.backend)
        at_init = input_gradient_norms(model, x_probe, labels_probe)
        losses = _train_memory_task(model, args.train_steps, args.train_seq_len, args.batch, input_size,
                                    num_classes, args.lr, generator, clip=1.0)
        trained = input_gradient_norms(model, x_probe, labels_probe)
        curves[cell] = {"init": at_init, "trained": trained}
        for phase, norms in (("init", at_init), ("trained", trained)):
            ratio = float(norms[0] / norms[-1]) if norms[-1] > 0 else 0.0
            table.append((names[cell], phase, decay_per_step(norms), float(norms[-1]), float(norms[0]), ratio,
                          losses[-1] if phase == "trained" else float("nan")))
    print()
    print("| cell | when | factor per step | norm at t=T-1 | norm at t=0 | t=0 / t=T-1 | last train loss |")
    print("|---|---|---|---|---|---|---|")
    for name, phase, factor, last, first, ratio, loss in table:
        loss_text = "" if math.isnan(loss) else f"{loss:.3f}"
        print(f"| {name} | {phase} | {factor:.4f} | {last:.3e} | {first:.3e} | {ratio:.3e} | {loss_text} |")
    print("(factor per step: geometric-mean change of ||dL/dx_t|| per step of distance from the loss; "
          "< 1 vanishes, > 1 explodes)")

    clip_results = None
    if args.clip > 0:
        clip_results = _clip_demo(args, generator)
        print()
        print(f"exploding gradients: relu Elman RNN, recurrent weight = {args.explode_scale} x orthogonal, "
              f"T={args.clip_seq_len}: ||dL/dx_t|| grows by {clip_results['growth_per_step']:.3f} per step; "
              f"{args.clip_steps} SGD steps (lr {args.clip_lr}) with and without clipping the gradient norm "
              f"to {args.clip}:")
        print("| step | loss (no clipping) | grad norm (no clipping) | loss (clipped) | grad norm before clipping |")
        print("|---|---|---|---|---|")
        plain, clipped = clip_results["no clipping"], clip_results[f"clip {args.clip}"]
        for step, ((loss_a, norm_a), (loss_b, norm_b)) in enumerate(zip(plain, clipped)):
            print(f"| {step} | {loss_a:.4g} | {norm_a:.3e} | {loss_b:.4g} | {norm_b:.3e} |")
        finite = all(math.isfinite(loss) for loss, _ in clipped)
        print(f"clipped run {'stays finite' if finite else 'diverged too'}; unclipped run ends at loss "
              f"{plain[-1][0]:.4g}")

    if args.json:
        payload = {cell: {phase: norms.tolist() for phase, norms in value.items()} for cell, value in curves.items()}
        payload["factors"] = [dict(cell=n, when=p, factor=f) for n, p, f, *_ in table]
        if clip_results is not None:
            payload["clip"] = clip_results
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"figures written to {args.json}")
    if args.plot:
        _plot_gradients(curves, names, clip_results, args)
    return 0


def _plot_gradients(curves, names, clip_results, args) -> None:
    plt = _pyplot()
    panels = 2 + (clip_results is not None)
    figure, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.2))
    colors = {"rnn": "tab:red", "lstm": "tab:blue", "gru": "tab:green"}
    for axis, phase in zip(axes, ("init", "trained")):
        for cell, value in curves.items():
            norms = value[phase]
            distance = torch.arange(len(norms) - 1, -1, -1)
            keep = norms > 0
            axis.semilogy(distance[keep].numpy(), norms[keep].numpy(), color=colors[cell],
                          label=f"{names[cell]} (x{decay_per_step(norms):.3f}/step)")
        axis.set_xlabel("distance from the loss, T-1-t (steps)")
        axis.set_ylabel("||dL/dx_t||")
        axis.set_title("at initialisation" if phase == "init" else f"after {args.train_steps} training steps")
        axis.grid(True, which="major", alpha=0.3)
        axis.legend(fontsize=8)
    if clip_results is not None:
        axis = axes[2]
        plain = [loss for loss, _ in clip_results["no clipping"]]
        clipped = [loss for loss, _ in clip_results[f"clip {args.clip}"]]
        axis.semilogy([abs(v) if math.isfinite(v) else float("nan") for v in plain], color="tab:red",
                      label="no clipping")
        axis.semilogy(clipped, color="tab:blue", label=f"grad norm clipped to {args.clip}")
        axis.set_xlabel("SGD step")
        axis.set_ylabel("loss")
        axis.set_title(f"relu RNN, W_hh = {args.explode_scale} x orthogonal")
        axis.legend(fontsize=8)
        axis.grid(True, alpha=0.3)
    figure.suptitle(f"BPTT: gradient of the last-step loss w.r.t. each input, T={args.seq_len}", fontsize=10)
    figure.tight_layout()
    figure.savefig(args.plot, dpi=130)
    plt.close(figure)
    print(f"plot written to {args.plot}")


# ---------------------------------------------------------------------------------------------
# argument parsing
# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatedrnn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"gatedrnn {gatedrnn.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{info,train,bench,gradients}")
    commands.required = True
    backends = list(gatedrnn.backends.BACKENDS)

    info = commands.add_parser("info", help="versions, backends (and why one does not run), devices, threads",
                               description="Versions, the backends that run here (and, for each that does "
                                           "not, the reason and the fix), the devices and the thread count.")
    info.set_defaults(handler=command_info)

    train = commands.add_parser(
        "train", help="train a character-level language model (Embedding + LSTM/GRU/RNN + Linear)",
        description="Train gatedrnn.models.CharLanguageModel on the source of Python's standard library "
                    "(read from this interpreter) or on --text FILE; report validation loss / bits per "
                    "character against the unigram baseline and print a sample.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("--text", help="train on this UTF-8 text file instead of the standard library")
    train.add_argument("--max-chars", type=int, default=400_000, help="use at most this many characters")
    train.add_argument("--cell", choices=["lstm", "gru", "rnn"], default="lstm")
    train.add_argument("--hidden-size", type=int, default=256)
    train.add_argument("--embedding-dim", type=int, default=64)
    train.add_argument("--layers", type=int, default=1)
    train.add_argument("--dropout", type=float, default=0.0)
    train.add_argument("--seq-len", type=int, default=64)
    train.add_argument("--batch", type=int, default=32)
    train.add_argument("--steps", type=int, default=500)
    train.add_argument("--time-budget", type=float, default=TRAIN_TIME_BUDGET, metavar="SECONDS",
                       help="stop training early after this many seconds (0: run every step)")
    train.add_argument("--lr", type=float, default=4e-3)
    train.add_argument("--clip", type=float, default=1.0, help="clip the gradient norm to this (0: off)")
    train.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    train.add_argument("--backend", choices=backends, default=None, help="gatedrnn backend (default: automatic)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--sample", type=int, default=300, help="characters to sample at the end (0: none)")
    train.add_argument("--prompt", default="def ", help="text the sample continues")
    train.add_argument("--temperature", type=float, default=0.7)
    train.add_argument("--save", metavar="PATH", help="write the state dict (torch.nn names) here, and the "
                                                      "configuration and vocabulary to PATH.json")
    train.add_argument("--compare-torch", action="store_true",
                       help="then run the same steps with torch.nn modules and compare tokens/s")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=command_train)

    bench = commands.add_parser(
        "bench", help="the perf/ benchmarks: gatedrnn vs torch.nn, table, --plot, --json, --profile",
        description="Time gatedrnn against torch.nn (perf/bench_rnn.py on the CPU, perf/bench_rnn_gpu.py "
                    "on CUDA; suite conv: perf/bench_conv.py, conv2d on the ResNet-18 layer shapes against "
                    "oneDNN / cuDNN) and print the table.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bench.add_argument("suite", nargs="?", choices=["rnn", "conv", "all"], default="rnn")
    bench.add_argument("--quick", action="store_true", help="a small subset (perf/bench_rnn.py --quick)")
    bench.add_argument("--cells", default="lstm,gru,rnn", help="comma-separated cells")
    bench.add_argument("--configs", help="T,B,H triples separated by ';' (default: the perf/ set)")
    bench.add_argument("--repeats", type=int, default=None, help="timed runs per implementation (median)")
    bench.add_argument("--warmup", type=int, default=None, help="untimed runs first")
    bench.add_argument("--backend", choices=backends, default=None,
                       help="gatedrnn backend to time (default: cython on the CPU, triton on CUDA)")
    bench.add_argument("--device", default="cpu", help="cpu, or cuda for the Triton vs cuDNN table")
    bench.add_argument("--plot", metavar="FILE.png", help="bar chart of the ratios (needs gatedrnn[plot])")
    bench.add_argument("--json", metavar="FILE", help="write the raw figures here")
    bench.add_argument("--profile", metavar="DIR", help="write a torch.profiler Chrome trace of one run here")
    bench.add_argument("--network", action="store_true",
                       help="conv: add a whole ResNet-18 training step (batch 8, 224x224) against torch.nn")
    bench.set_defaults(handler=command_bench)

    gradients = commands.add_parser(
        "gradients", help="BPTT measured: ||dL/dx_t|| vs distance for Elman RNN, LSTM, GRU; --clip",
        description="The seed document's backpropagation-through-time argument, measured: on a memory task "
                    "whose loss reads only the last step, the norm of dL/dx_t for every t, at "
                    "initialisation and after a short training, and the decay factor per step. --clip "
                    "shows gradient clipping on a relu RNN whose gradients explode.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    gradients.add_argument("--cells", default="rnn,lstm,gru")
    gradients.add_argument("--seq-len", type=int, default=500, help="T of the measured sequences")
    gradients.add_argument("--hidden-size", type=int, default=64)
    gradients.add_argument("--batch", type=int, default=16)
    gradients.add_argument("--train-steps", type=int, default=150)
    gradients.add_argument("--train-seq-len", type=int, default=50, help="T of the training sequences")
    gradients.add_argument("--lr", type=float, default=3e-3)
    gradients.add_argument("--backend", choices=backends, default=None)
    gradients.add_argument("--seed", type=int, default=0)
    gradients.add_argument("--clip", type=float, default=0.0,
                           help="also run the exploding-gradient demo, clipping the gradient norm to this")
    gradients.add_argument("--explode-scale", type=float, default=2.0,
                           help="recurrent weight = this x an orthogonal matrix, in the --clip demo")
    gradients.add_argument("--clip-seq-len", type=int, default=50)
    gradients.add_argument("--clip-steps", type=int, default=10)
    gradients.add_argument("--clip-lr", type=float, default=0.1)
    gradients.add_argument("--plot", metavar="FILE.png", help="log-scale plot (needs gatedrnn[plot])")
    gradients.add_argument("--json", metavar="FILE", help="write the curves here")
    gradients.set_defaults(handler=command_gradients)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except CommandError as error:
        print(f"gatedrnn {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
