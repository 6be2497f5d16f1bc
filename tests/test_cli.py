"""The ``gatedrnn`` command line on small settings: exit codes, output, files written; and the
state dict ``train --save`` writes, loaded into plain ``torch.nn`` modules."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from gatedrnn import cli
from gatedrnn.models.sequence import CharLanguageModel, SequenceClassifier, torch_char_language_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(capsys, *argv):
    """``gatedrnn argv`` in this process: (exit status, stdout, stderr)."""
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def has_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


needs_matplotlib = pytest.mark.skipif(not has_matplotlib(), reason="matplotlib (gatedrnn[plot]) not installed")


def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """A small real text (stdlib sources) so the train tests do not depend on the default corpus size."""
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text(cli.stdlib_corpus(60_000), encoding="utf-8")
    return str(path)


# -- help and the module entry point -------------------------------------------------------------

@pytest.mark.parametrize("command", ["info", "train", "bench", "gradients"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: gatedrnn {command}" in capsys.readouterr().out


def test_python_dash_m_runs_info():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-m", "gatedrnn", "info"], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    for needle in ("gatedrnn", "torch", "triton", "cython", "numpy", "threads"):
        assert needle in result.stdout


def test_no_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2


# -- info ------------------------------------------------------------------------------------------

def test_info_lists_versions_backends_devices(capsys):
    status, out, _ = run_cli(capsys, "info")
    assert status == 0
    assert f"gatedrnn   {cli.gatedrnn.__version__}" in out
    assert f"torch      {torch.__version__}" in out
    backends_section = out.split("backends", 1)[1]
    for name, backend_status in cli.gatedrnn.available_backends().items():
        line = next(l for l in backends_section.splitlines() if l.strip().startswith(name + " "))
        assert ("yes" if backend_status.available else "no") in line
        assert backend_status.reason in line  # the reason, with its fix when the backend is missing
    assert f"torch threads {torch.get_num_threads()}" in out


# -- train -----------------------------------------------------------------------------------------

def test_train_small_run_beats_unigram_and_saves_a_torch_state_dict(capsys, small_corpus, tmp_path):
    save = str(tmp_path / "lm.pt")
    status, out, err = run_cli(capsys, "train", "--text", small_corpus, "--hidden-size", "64",
                               "--embedding-dim", "32", "--steps", "120", "--batch", "16", "--seq-len", "32",
                               "--lr", "1e-2", "--sample", "40", "--save", save)
    assert status == 0, err
    assert "tok_s" in err  # the progress bar reports throughput
    line = next(l for l in out.splitlines() if l.startswith("validation loss"))
    validation = float(line.split()[2])
    baseline = float(line.split("unigram baseline")[1].split()[0])
    assert validation < baseline - 0.3, line  # clearly below the unigram baseline
    assert "sample (temperature" in out

    # What was saved is a plain state dict that torch.nn modules load strictly ...
    state = torch.load(save, weights_only=True)
    meta = json.load(open(save + ".json"))
    config = meta["config"]
    assert set(state) == {"embedding.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0",
                          "rnn.bias_hh_l0", "head.weight", "head.bias"}

    class PlainTorchModel(torch.nn.Module):
        """Written without gatedrnn: what a user of the saved file would write."""

        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(config["vocab_size"], config["embedding_dim"])
            self.rnn = torch.nn.LSTM(config["embedding_dim"], config["hidden_size"], config["num_layers"],
                                     batch_first=True)
            self.head = torch.nn.Linear(config["hidden_size"], config["vocab_size"])

        def forward(self, tokens):
            return self.head(self.rnn(self.embedding(tokens))[0])

    plain = PlainTorchModel()
    plain.load_state_dict(state, strict=True)
    ours = CharLanguageModel(**config)
    ours.load_state_dict(state, strict=True)
    tokens = torch.randint(0, config["vocab_size"], (3, 25))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens)[0], plain(tokens), rtol=1e-4, atol=1e-5)
    assert len(meta["characters"]) == config["vocab_size"]


def test_train_compare_torch_reports_both_rates(capsys, small_corpus):
    status, out, err = run_cli(capsys, "train", "--text", small_corpus, "--cell", "gru", "--hidden-size", "32",
                               "--embedding-dim", "16", "--steps", "6", "--batch", "4", "--seq-len", "16",
                               "--sample", "0", "--compare-torch", "--quiet")
    assert status == 0, err
    line = next(l for l in out.splitlines() if l.startswith("compare:"))
    assert "torch.nn" in line and "ratio gatedrnn/torch.nn" in line


def test_train_stops_when_the_time_budget_runs_out(capsys, small_corpus):
    status, out, err = run_cli(capsys, "train", "--text", small_corpus, "--hidden-size", "16", "--embedding-dim",
                               "8", "--steps", "100000", "--batch", "2", "--seq-len", "8", "--time-budget", "0.5",
                               "--sample", "0", "--quiet")
    assert status == 0, err
    assert "stopped after" in out and "--time-budget of 0.5 s ran out" in out


def test_train_rejects_a_missing_text_file(capsys, tmp_path):
    status, _, err = run_cli(capsys, "train", "--text", str(tmp_path / "absent.txt"))
    assert status == 2 and "cannot read" in err


@pytest.mark.parametrize("argv, message", [
    (["train", "--device", "bogus"], "--device: expected cpu, cuda, cuda:N or auto, got 'bogus'"),
    (["train", "--device", "meta"], "--device: expected cpu, cuda"),
    (["train", "--dropout", "1.5"], r"--dropout must lie in \[0, 1\), got 1.5"),
    (["train", "--embedding-dim", "0"], "--embedding-dim must be >= 1, got 0"),
    (["train", "--max-chars", "-5"], "--max-chars must be >= 1"),
    (["train", "--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["train", "--lr", "-1"], "--lr must be a finite number > 0"),
    (["train", "--temperature", "nan"], "--temperature must be a finite number >= 0"),
    (["train", "--steps", "1", "--seq-len", "100000"], "shorter than --seq-len"),
    (["train", "--save", "SUBDIR/"], "a file name is needed, not a directory"),
    (["bench", "--configs", "a,b,c"], "--configs: expected T,B,H triples of positive ints"),
    (["bench", "--configs", "0,1,8"], "--configs: expected T,B,H triples of positive ints"),
    (["bench", "--repeats", "0"], "--repeats must be >= 1, got 0"),
    (["bench", "--warmup", "-1"], "--warmup must be >= 0, got -1"),
    (["bench", "--json", "MISSING/out.json"], "does not exist"),
    (["bench", "conv", "--plot", "MISSING/out.png"], "does not exist"),
    (["bench", "--device", "bogus"], "--device: expected"),
    (["gradients", "--train-steps", "0"], "--train-steps must be >= 1, got 0"),
    (["gradients", "--clip", "1", "--clip-steps", "0"], "--clip-steps must be >= 1"),
    (["gradients", "--batch", "0"], "--batch must be >= 1"),
    (["gradients", "--cells", ""], "--cells: name at least one"),
    (["gradients", "--lr", "-1"], "--lr must be a finite number > 0"),
    (["gradients", "--json", "MISSING/x.json"], "does not exist"),
    (["bench", "conv", "--profile", "MISSING/trace"], "apply to the rnn suite only"),
])
def test_bad_options_fail_before_any_work(capsys, tmp_path, small_corpus, argv, message):
    """A user error is one line ``gatedrnn <command>: error: ...`` and exit status 2, found before
    the run (training, a benchmark) rather than after it or as a traceback from torch."""
    argv = [a.replace("SUBDIR", str(tmp_path)).replace("MISSING", str(tmp_path / "missing")) for a in argv]
    if argv[0] == "train":
        argv += ["--text", small_corpus, "--quiet"]
    status, out, err = run_cli(capsys, *argv)
    assert status == 2 and f"gatedrnn {argv[0]}: error:" in err, (status, out, err)
    assert re.search(message, err), err
    assert "training:" not in out and "|" not in out  # nothing ran
    assert not os.path.exists(tmp_path / "missing")  # nor was anything created


@pytest.mark.parametrize("command", [["train", "--steps", "1"], ["gradients", "--train-steps", "1"],
                                     ["bench", "conv", "--quick"], ["bench", "--quick"]])
def test_unusable_backends_are_usage_errors(capsys, monkeypatch, small_corpus, command):
    """A backend that cannot run (here: triton without a GPU, or an unknown GATEDRNN_BACKEND)
    is a usage error naming the fix, for every command that computes; info reports it."""
    extra = ["--text", small_corpus, "--quiet"] if command[0] == "train" else []
    if torch.cuda.is_available():
        pytest.skip("triton can run here")
    status, _, err = run_cli(capsys, *command, "--backend", "triton", *extra)
    assert status == 2 and "--backend triton: backend 'triton'" in err, err
    monkeypatch.setenv("GATEDRNN_BACKEND", "bogus")
    status, _, err = run_cli(capsys, *command, *extra)
    assert status == 2 and "unknown backend 'bogus'" in err, err
    status, out, _ = run_cli(capsys, "info")
    assert status == 0 and "GATEDRNN_BACKEND is invalid" in out


def test_train_reports_the_characters_it_trains_on(capsys, small_corpus):
    status, out, err = run_cli(capsys, "train", "--text", small_corpus, "--max-chars", "3000", "--steps", "1",
                               "--hidden-size", "8", "--embedding-dim", "4", "--batch", "2", "--seq-len", "8",
                               "--sample", "0", "--quiet", "--time-budget", "0.001")
    assert status == 0, err
    assert "3,000 characters" in out and "train 2,700 / validation 300" in out
    assert "slower or busier" not in out  # the budget was the user's, not the default


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_models_match_their_torch_build(cell):
    torch.manual_seed(0)
    model = CharLanguageModel(30, hidden_size=16, num_layers=2, cell=cell, embedding_dim=8)
    twin = model.to_torch()
    assert isinstance(twin.rnn, getattr(torch.nn, cell.upper()))
    reference = torch_char_language_model(**model.config)
    reference.load_state_dict(model.to_torch_state_dict(), strict=True)
    tokens = torch.randint(0, 30, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[0], reference(tokens)[0], rtol=1e-4, atol=1e-5)
    classifier = SequenceClassifier(30, 3, hidden_size=16, cell=cell)
    lengths = torch.tensor([11, 4])
    logits = classifier(tokens, lengths)
    assert logits.shape == (2, 3)
    with torch.no_grad():  # the padding after a sequence's length is never read
        torch.testing.assert_close(classifier(tokens[1:2, :4])[0], logits[1], rtol=1e-5, atol=1e-6)


# -- bench -----------------------------------------------------------------------------------------

TINY_BENCH = ["--cells", "lstm", "--configs", "12,2,16", "--repeats", "1", "--warmup", "0"]


@needs_matplotlib
def test_bench_writes_table_plot_json_and_trace(capsys, tmp_path):
    png, figures, trace_dir = tmp_path / "bench.png", tmp_path / "bench.json", tmp_path / "trace"
    status, out, err = run_cli(capsys, "bench", "rnn", *TINY_BENCH, "--plot", str(png), "--json", str(figures),
                               "--profile", str(trace_dir))
    assert status == 0, err
    assert "| LSTM | 12 | 2 | 16 | inference |" in out and "| LSTM | 12 | 2 | 16 | fwd+bwd |" in out
    assert is_png(png)
    rows = json.load(open(figures))["rows"]
    assert {r["mode"] for r in rows} == {"inference", "fwd+bwd"} and all(r["ratio"] > 0 for r in rows)
    traces = list(trace_dir.glob("*.json"))
    assert len(traces) == 1
    assert "traceEvents" in json.load(open(traces[0]))
    assert "where the time went" in out and "Self CPU" in out


def test_bench_conv_quick_writes_table_and_json(capsys, tmp_path):
    figures = tmp_path / "conv.json"
    status, out, _ = run_cli(capsys, "bench", "conv", "--quick", "--repeats", "1", "--warmup", "0",
                             "--json", str(figures))
    assert status == 0
    assert "| 3x3 512@7 | forward | 8 |" in out and "| 1x1/2 64->128@56 | fwd+bwd | 8 |" in out
    rows = json.load(open(figures))["rows"]
    assert {r["mode"] for r in rows} == {"forward", "fwd+bwd"} and all(r["ratio"] > 0 for r in rows)


def test_bench_conv_rejects_rnn_options(capsys):
    status, _, err = run_cli(capsys, "bench", "conv", "--cells", "lstm")
    assert status == 2 and "rnn suite only" in err


def test_plot_without_matplotlib_names_the_extra(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    status, _, err = run_cli(capsys, "bench", *TINY_BENCH, "--plot", str(tmp_path / "b.png"))
    assert status == 2 and "pip install 'gatedrnn[plot]'" in err


# -- gradients -------------------------------------------------------------------------------------

@needs_matplotlib
def test_gradients_elman_vanishes_gated_cells_keep_gradient(capsys, tmp_path):
    png, figures = tmp_path / "grad.png", tmp_path / "grad.json"
    status, out, err = run_cli(capsys, "gradients", "--seq-len", "120", "--hidden-size", "32", "--batch", "8",
                               "--train-steps", "20", "--train-seq-len", "20", "--clip", "1", "--clip-steps", "4",
                               "--plot", str(png), "--json", str(figures))
    assert status == 0, err
    assert is_png(png)
    data = json.load(open(figures))
    factor = {(f["cell"], f["when"]): f["factor"] for f in data["factors"]}
    for when in ("init", "trained"):
        elman = factor[("Elman RNN (tanh)", when)]
        assert elman < 0.8  # geometric decay with distance
        for gated in ("LSTM", "GRU"):
            assert factor[(gated, when)] > elman + 0.1
            # over 120 steps, the Elman gradient at t=0 is orders of magnitude below the gated ones
            norms_elman, norms_gated = data["rnn"][when], data[gated.lower()][when]
            assert norms_gated[0] / norms_gated[-1] > 1e6 * norms_elman[0] / norms_elman[-1]
    assert data["clip"]["growth_per_step"] > 1  # the relu RNN's gradients explode
    assert "| Elman RNN (tanh) | init |" in out and "exploding gradients" in out
