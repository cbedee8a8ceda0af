"""The `unmask` command: parsers generated from the settings classes, exit codes, output.

All but one test call `main([...])` in-process; one smoke test runs the installed console script.
"""

import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from unmask.cli.main import COMMANDS, main, parse
from unmask.cli.parsing import normalise_flags
from unmask.config import EvalConfig, FillConfig, TrainConfig, from_dict

pytestmark = pytest.mark.slow


def test_the_console_script_runs_and_reports_errors_without_a_traceback(tmp_path):
    script = Path(sys.executable).parent / "unmask"
    assert script.is_file(), "pip install -e . installs the console script"
    result = subprocess.run(
        [str(script), "prepare", str(tmp_path / "none" / "*.txt"), "--out", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "glob matched no files" in result.stderr and "Traceback" not in result.stderr


def test_dashed_and_underscored_flags_both_work():
    assert normalise_flags(["--batch-size", "8", "--top-k=3", "x", "--a-b", "--mask-prob"]) == [
        "--batch_size",
        "8",
        "--top_k=3",
        "x",
        "--a_b",
        "--mask_prob",
    ]
    name, config = parse(["train", "--data", "d", "--out", "o", "--model", "m", "--batch-size", "8"])
    assert name == "train" and config == TrainConfig(data="d", out="o", model="m", batch_size=8)
    name, config = parse(["fill", "m", "a [MASK].", "b [MASK].", "--top_k", "3", "--json"])
    assert config == FillConfig(model="m", texts=["a [MASK].", "b [MASK]."], top_k=3, json=True)
    name, config = parse(["eval", "m", "--data", "s1", "s2", "--no-json"])
    assert config == EvalConfig(model="m", data=["s1", "s2"])


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_documents_every_setting_with_dashes(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    help_text = capsys.readouterr().out
    settings = COMMANDS[command].settings
    from unmask.cli.parsing import field_docs

    docs = field_docs(settings)
    for field in [f.name for f in dataclasses.fields(settings)]:
        if field not in getattr(settings, "POSITIONAL", ()):
            assert f"--{field.replace('_', '-')}" in help_text, field
        assert field in docs, f"{command}: {field} has no docstring, so no help"
        assert docs[field].split()[0] in help_text, field
    assert "_" not in "".join(w for w in help_text.split() if w.startswith("--"))
    flat = " ".join(help_text.split())
    assert "(required) (required)" not in flat and "(required) (type" not in flat, "required once, and no default for what has none"
    assert flat.count("(required)") == sum(
        f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING for f in dataclasses.fields(settings)
    )


def test_version_and_a_stray_positional(capsys):
    from unmask import __version__

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"unmask {__version__}"
    assert main(["eval", "model", "extra", "--data", "s"]) == 2
    assert capsys.readouterr().err.strip() == "unmask eval: error: unexpected argument 'extra' (see unmask eval --help)"


def test_yaml_config_with_flag_overrides(tmp_path):
    (tmp_path / "run.yaml").write_text("data: d\nout: o\nmodel: m\nlr: 0.001\nbatch_size: 4\n")
    _, config = parse(["train", "--config", str(tmp_path / "run.yaml"), "--batch-size", "16"])
    assert config.lr == 0.001 and config.batch_size == 16
    (tmp_path / "fill.yaml").write_text("top_k: 2\n")
    _, config = parse(["fill", "--config", str(tmp_path / "fill.yaml"), "m", "x [MASK]"])
    assert config.top_k == 2


def test_every_shipped_config_loads():
    shipped = sorted((REPO / "configs").glob("*.yaml"))
    assert shipped, "configs/ ships at least one example"
    for path in shipped:
        from_dict(TrainConfig, yaml.safe_load(path.read_text()), str(path))


def test_bad_input_gets_a_message_and_exit_code_not_a_traceback(tmp_path, tokenizer_dir, capsys):
    assert main(["prepare", str(tmp_path / "nothing" / "*.txt"), "--out", str(tmp_path / "s"), "--tokenizer", str(tokenizer_dir)]) == 1
    assert "glob matched no files" in capsys.readouterr().err
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfe broken\n")
    assert main(["prepare", str(tmp_path / "bad.txt"), "--out", str(tmp_path / "s"), "--tokenizer", str(tokenizer_dir)]) == 1
    assert "bad.txt:2: not valid UTF-8" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r"), "--model", "m", "--mask-prob", "1.5"]) == 1
    assert "--mask-prob" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r"), "--model", "m"]) == 1
    assert "none': no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), "--model", "m"]) == 1
    assert "not a token store" in capsys.readouterr().err
    assert main(["embed", "m", "--pooling", "max", "--file", "f", "--out", "x.npy"]) == 2
    assert "--pooling: 'max' is not one of mean, cls" in capsys.readouterr().err


def test_prepare_train_fill_and_inspect_from_the_command_line(tmp_path, corpus_dir, tokenizer_dir, tiny_model_dir, capsys, monkeypatch):
    store, run = tmp_path / "store", tmp_path / "run"
    assert main(["prepare", str(corpus_dir), "--out", str(store), "--tokenizer", str(tokenizer_dir), "--val-fraction", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "36 training documents" in out and "4 held out" in out
    args = [
        "train",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(store),
        "--out",
        str(run),
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--seq-len",
        "32",
        "--eval-every",
        "0",
        "--json",
    ]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 3

    assert main(["fill", str(run), "the cat [MASK] the door.", "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "mask 1:" in out and "->" in out

    texts = tmp_path / "texts.txt"
    texts.write_text("a dog [MASK] a book.\n\nthe [MASK] reads <mask> letter.\n")
    assert main(["fill", str(run / "model"), "--file", str(texts), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [len(line["masks"]) for line in lines] == [1, 2]
    assert len(lines[0]["masks"][0]["candidates"]) == 5

    monkeypatch.setattr(sys, "stdin", io.StringIO("the cat [MASK] the door.\n"))
    assert main(["fill", str(run), "-", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert main(["fill", str(run), "no mask here"]) == 1
    assert "text 1: no mask" in capsys.readouterr().err

    inspect = ["inspect", "the cat sees the door today.", "--model", str(tokenizer_dir), "--seed", "3", "--mask-prob", "0.5"]
    assert main(inspect) == 0
    first = capsys.readouterr().out
    assert main(inspect) == 0
    assert capsys.readouterr().out == first
    assert "[CLS]" in first and "label" in first and "picked" in first


def test_eval_score_embed_compare_and_plot_commands(tmp_path, store_dir, corpus_dir, tiny_model_dir, capsys):
    import numpy as np

    from unmask.pretrain.train import train

    run = tmp_path / "run"
    train(
        TrainConfig(data=str(store_dir), out=str(run), model=str(tiny_model_dir), seq_len=32, batch_size=4, max_steps=4, eval_every=2),
        progress=False,
        echo=lambda _: None,
    )

    assert main(["eval", str(run), "--data", str(store_dir), "--seq-len", "32", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["masked_tokens"] > 0 and metrics["top5_accuracy"] >= metrics["accuracy"]
    assert main(["eval", str(tiny_model_dir), "--data", str(corpus_dir / "doc001.txt"), str(corpus_dir / "doc002.txt")]) == 0
    table = capsys.readouterr().out
    assert "top-5 accuracy" in table and "word-piece accuracy" in table

    assert main(["score", str(run), "the cat sees the door.", "a dog reads a book.", "--json"]) == 0
    scores = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(scores) == 2 and all(s["pll"] < 0 and s["pseudo_perplexity"] > 1 for s in scores)

    texts = tmp_path / "texts.txt"
    texts.write_text("the cat sees the door.\n\na dog reads a book every morning in the park.\n")
    assert main(["embed", str(run), "--file", str(texts), "--out", str(tmp_path / "x.npy")]) == 0
    vectors = np.load(tmp_path / "x.npy")
    assert vectors.shape == (3, 32), "one row per input line, the blank one included"
    assert main(["embed", str(run), "--file", str(texts), "--out", str(tmp_path / "x.npz")]) == 0
    assert np.array_equal(np.load(tmp_path / "x.npz")["embeddings"], vectors) and not (tmp_path / "x.npz.npy").exists()
    assert main(["embed", str(run), "--tokens", "the cat sees"]) == 0
    assert "[CLS]" in capsys.readouterr().out

    assert (
        main(["compare", str(tiny_model_dir), str(run), "--data", str(store_dir), "--seq-len", "32", "--out", str(tmp_path / "cmp")]) == 0
    )
    report = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert report["base_metrics"]["masked_tokens"] == report["trained_metrics"]["masked_tokens"]
    assert report["base_metrics"]["loss"] != report["trained_metrics"]["loss"]
    assert "| top-1 accuracy |" in (tmp_path / "cmp" / "report.md").read_text()

    assert main(["plot", str(run)]) == 0
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", str(tmp_path)]) == 1
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_a_requeued_job_resumes_with_out_and_resume_alone(tmp_path, store_dir, tiny_model_dir, capsys):
    run = tmp_path / "run"
    first = ["train", "--data", str(store_dir), "--model", str(tiny_model_dir), "--out", str(run), "--seq-len", "32", "--batch-size", "4"]
    assert main([*first, "--max-steps", "2", "--eval-every", "0", "--checkpoint-every", "1", "--progress", "none"]) == 0
    capsys.readouterr()
    name, settings = parse(["train", "--out", str(run), "--resume", "--max-steps", "3"])
    assert (settings.data, settings.model, settings.seq_len, settings.max_steps, settings.resume) == (
        [str(store_dir)],
        str(tiny_model_dir),
        32,
        3,
        True,
    )
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 3
    assert main(["train", "--out", str(tmp_path / "elsewhere"), "--resume"]) == 1, "no saved config: the settings are needed"
    assert "--out " + str(tmp_path / "elsewhere") + ": no run to resume here (no such folder); give data" in capsys.readouterr().err
    (tmp_path / "notes").mkdir()
    assert main(["train", "--out", str(tmp_path / "notes"), "--resume"]) == 1
    assert "no run to resume here (no config.yaml in it)" in capsys.readouterr().err


def test_a_finished_run_says_where_it_is_in_a_few_lines_and_json_on_request(tmp_path, store_dir, tiny_model_dir, capsys):
    args = ["train", "--data", str(store_dir), "--model", str(tiny_model_dir), "--out", str(tmp_path / "run"), "--seq-len", "32"]
    assert main([*args, "--batch-size", "4", "--max-steps", "2", "--eval-every", "2", "--progress", "none"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and printed[0].startswith(f"run {tmp_path / 'run'}: 2 steps") and printed[1].startswith("held-out: loss")
    assert str(tmp_path / "run" / "model") in printed[2]


def test_a_run_is_never_written_among_files_that_are_not_a_runs(tmp_path, store_dir, tiny_model_dir, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("mine")
    args = ["train", "--data", str(store_dir), "--model", str(tiny_model_dir), "--out", str(mine), "--seq-len", "32", "--max-steps", "1"]
    assert main(args) == 1
    assert f"--out {mine}: a folder of other files (thesis.tex), not a run; choose a new or empty folder" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"], "nothing written beside them, the lock included"


def test_an_unknown_key_in_a_config_file_suggests_the_setting_meant(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("data: x\nout: y\nmodel: m\nbatch_sise: 8\n")
    assert main(["train", "--config", str(config)]) == 1
    assert f"{config}: unknown setting(s) batch_sise; did you mean 'batch_size'?" in capsys.readouterr().err


def test_a_reader_that_goes_away_gets_a_quiet_exit_not_a_traceback(tiny_model_dir):
    """`unmask fill ... | head -1`: the pipe is closed before unmask writes."""
    import os

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line is written
    process = subprocess.run(
        [sys.executable, "-m", "unmask", "fill", str(tiny_model_dir), "the cat [MASK] the door.", "--json", "--device", "cpu"],
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    os.close(write)
    assert process.returncode == 141 and "Traceback" not in process.stderr and "BrokenPipe" not in process.stderr, process.stderr


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--max-step", "30"], r"unrecognized option --max-step; did you mean --max-steps\?"),
        (["--bach_size", "3"], r"unrecognized option --bach_size; did you mean --batch-size\?"),
        (["--masking", "words"], r"--masking: 'words' is not one of token, whole-word, span$"),
        (["--lr=fast"], r"--lr: 'fast' is not a number$"),
        (
            ["--time-budget", "5", "min"],
            r"unexpected argument 'min' after --time-budget 5: a value with spaces needs quotes \(--time-budget '5 min'\)",
        ),
    ],
    ids=["prefix", "typo", "choice", "number", "unquoted-space"],
)
def test_the_parser_takes_no_abbreviations_and_answers_in_one_line(argv, message, capsys):
    import re

    assert main(["train", "--data", "d", "--out", "o", "--model", "m", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert main(["train", "--data", "d", "--out", "o", "--from-scratch", "huge"]) == 2
    assert capsys.readouterr().err.strip() == (
        "unmask train: error: --from-scratch huge: give a size (tiny, mini, small, base, large) or ARCH-SIZE with ARCH one of "
        "bert, roberta, modernbert, deberta-v2 (e.g. modernbert-base)"
    )


def test_a_bad_choice_in_a_yaml_file_is_refused_too(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text("data: d\nout: o\nmodel: m\nmasking: words\n")
    assert main(["train", "--config", str(tmp_path / "run.yaml")]) == 1
    assert "run.yaml: --masking: 'words' is not one of token, whole-word, span" in capsys.readouterr().err


def test_fill_against_reads_piped_texts_once_for_both_models(tiny_model_dir, distilbert_dir, capsys, monkeypatch):
    """stdin can be read once: both models must fill the texts that one read gave."""
    monkeypatch.setattr("sys.stdin", io.StringIO("the cat [MASK] the door.\na [MASK] of tea.\n"))
    assert main(["fill", str(tiny_model_dir), "--against", str(distilbert_dir), "--json"]) == 0, capsys.readouterr().err
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in records] == ["the cat [MASK] the door.", "a [MASK] of tea."]
    assert all(r["against"]["text"] == r["text"] and r["against"]["masks"] for r in records)


def test_fill_against_a_second_model_prints_both_side_by_side(tiny_model_dir, distilbert_dir, capsys):
    assert main(["fill", str(tiny_model_dir), "the cat [MASK] the door.", "--against", str(distilbert_dir), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "the cat [MASK] the door." and str(tiny_model_dir) in lines[1] and str(distilbert_dir) in lines[1]
    assert lines[2].lstrip().startswith("mask 1") and len(lines) == 4 and lines[2].count("%") == lines[3].count("%") == 2
    assert main(["fill", str(tiny_model_dir), "the cat [MASK] the door.", "--against", str(distilbert_dir), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["against"]["model"] == str(distilbert_dir) and len(record["against"]["masks"][0]["candidates"]) == 5


def test_positional_arguments_may_follow_the_options():
    """`unmask fill RUN --top-k 3 "text"`, as people type it (argparse alone refuses it)."""
    _, fill = parse(["fill", "runs/x", "--top-k", "3", "a [MASK].", "b [MASK].", "--against", "m", "--json"])
    assert (fill.model, fill.texts, fill.top_k, fill.against, fill.json) == ("runs/x", ["a [MASK].", "b [MASK]."], 3, "m", True)
    _, serve = parse(["serve", "--models", "a", "b", "--port", "9000"])
    assert (serve.paths, serve.models, serve.port) == (["runs"], ["a", "b"], 9000)
    _, inspect = parse(["inspect", "--seed", "3", "--no-json", "the text"])
    assert (inspect.text, inspect.seed) == ("the text", 3)


def test_fill_from_a_checkpoint_names_the_step_it_used(served, tiny_model_dir, capsys):
    run = served / "finished"
    sentence = "the cat [MASK] the door."
    assert main(["fill", str(run), "--step", "3", sentence, "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{sentence}  [{run}, checkpoint of step 3]"
    assert main(["fill", str(run), "--step", "3", sentence, "--against", str(tiny_model_dir), "--device", "cpu"]) == 0
    header = capsys.readouterr().out.splitlines()[1].split()
    assert header == [str(run), "(step", "3)", str(tiny_model_dir)], header


def test_an_interrupted_command_says_what_it_keeps(monkeypatch, capsys):
    cli = sys.modules["unmask.cli.main"]

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "prepare", dataclasses.replace(cli.COMMANDS["prepare"], function=interrupted))
    monkeypatch.setitem(cli.COMMANDS, "train", dataclasses.replace(cli.COMMANDS["train"], function=interrupted))
    assert main(["prepare", "corpus", "--out", "store", "--tokenizer", "t"]) == 130
    said = capsys.readouterr().err
    assert "checkpoints" not in said and "nothing half-written was kept" in said
    assert main(["train", "--data", "d", "--out", "o", "--model", "m"]) == 130
    assert "checkpoints are intact; continue with --resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["fill", "m", "a [MASK]."],
        ["eval", "m", "--data", "s"],
        ["score", "m", "a sentence."],
        ["embed", "m", "--texts", "a", "--out", "x.npy"],
        ["probe", "m", "--train", "t", "--eval", "e"],
        ["pairs", "m", "p.jsonl"],
        ["compare", "a", "b", "--data", "s", "--out", "o"],
    ],
    ids=lambda argv: argv[0],
)
def test_every_command_that_runs_a_model_takes_a_precision(argv):
    _, config = parse([*argv, "--precision", "bf16"])
    assert config.precision == "bf16"
    assert parse(argv)[1].precision == "fp32", "reported numbers default to fp32, the same on every machine"


def test_a_setting_left_out_is_named_with_where_to_give_it(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), "--model", "m"]) == 1
    assert "--data: required (give it on the command line or in --config)" in capsys.readouterr().err
    from unmask.api import train_settings
    from unmask.errors import UnmaskError

    with pytest.raises(UnmaskError, match=r"--data: required \(give it by name\)"):
        train_settings(out=str(tmp_path / "r"), model="m")
