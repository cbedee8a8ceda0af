import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from unmask.cli import build_parser, main, normalise_flags
from unmask.config import TrainConfig, from_dict

REPO = Path(__file__).resolve().parent.parent


def unmask(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unmask", *args], capture_output=True, text=True, input=stdin, timeout=300)


def test_dashed_and_underscored_flags_both_work():
    assert normalise_flags(["--batch-size", "8", "--top-k=3", "x", "--a-b", "--mask-prob"]) == [
        "--batch_size", "8", "--top_k=3", "x", "--a_b", "--mask_prob",
    ]  # fmt: skip
    args = build_parser().parse_args(normalise_flags(["train", "--data", "d", "--out", "o", "--model", "m", "--batch-size", "8"]))
    assert args.train.batch_size == 8


def test_train_help_documents_every_field_with_dashes(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = capsys.readouterr().out
    assert "--batch-size" in help_text and "--from-scratch" in help_text and "--batch_size" not in help_text
    assert "Windows per micro-batch." in help_text and "Peak learning rate." in help_text
    for field in TrainConfig.__dataclass_fields__:
        assert f"--{field.replace('_', '-')}" in help_text, field


def test_yaml_config_with_flag_overrides(tmp_path):
    (tmp_path / "run.yaml").write_text("data: d\nout: o\nmodel: m\nlr: 0.001\nbatch_size: 4\n")
    args = build_parser().parse_args(normalise_flags(["train", "--config", str(tmp_path / "run.yaml"), "--batch-size", "16"]))
    assert args.train.lr == 0.001 and args.train.batch_size == 16


def test_every_shipped_config_loads():
    shipped = sorted((REPO / "configs").glob("*.yaml"))
    assert shipped, "configs/ ships at least one example"
    for path in shipped:
        values = yaml.safe_load(path.read_text())
        from_dict(TrainConfig, values, str(path))


def test_bad_input_gets_a_message_and_exit_code_not_a_traceback(tmp_path, tokenizer_dir):
    result = unmask("prepare", str(tmp_path / "nothing" / "*.txt"), "--out", str(tmp_path / "s"), "--tokenizer", str(tokenizer_dir))
    assert result.returncode == 1 and "glob matched no files" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfe broken\n")
    result = unmask("prepare", str(tmp_path / "bad.txt"), "--out", str(tmp_path / "s"), "--tokenizer", str(tokenizer_dir))
    assert result.returncode == 1 and "bad.txt:2: not valid UTF-8" in result.stderr and "Traceback" not in result.stderr
    result = unmask("train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r"), "--model", "m", "--mask-prob", "1.5")
    assert result.returncode == 1 and "--mask-prob" in result.stderr and "Traceback" not in result.stderr
    result = unmask("train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r"), "--model", "m")
    assert result.returncode == 1 and "not a token store" in result.stderr


def test_prepare_train_fill_and_inspect_from_the_command_line(tmp_path, corpus_dir, tokenizer_dir, tiny_model_dir):
    store, run = tmp_path / "store", tmp_path / "run"
    result = unmask("prepare", str(corpus_dir), "--out", str(store), "--tokenizer", str(tokenizer_dir), "--val-fraction", "0.1")
    assert result.returncode == 0, result.stderr
    assert "36 training documents" in result.stdout and "4 held out" in result.stdout
    result = unmask(
        "train", "--model", str(tiny_model_dir), "--data", str(store), "--out", str(run), "--max-steps", "3", "--batch-size", "4",
        "--seq-len", "32", "--eval-every", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["steps"] == 3

    result = unmask("fill", str(run), "the cat [MASK] the door.", "--top-k", "2")
    assert result.returncode == 0, result.stderr
    assert "mask 1:" in result.stdout and "->" in result.stdout

    texts = tmp_path / "texts.txt"
    texts.write_text("a dog [MASK] a book.\n\nthe [MASK] reads <mask> letter.\n")
    result = unmask("fill", str(run / "model"), "--file", str(texts), "--json")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [len(line["masks"]) for line in lines] == [1, 2]
    assert len(lines[0]["masks"][0]["candidates"]) == 5

    result = unmask("fill", str(run), "-", "--json", stdin="the cat [MASK] the door.\n")
    assert len(result.stdout.splitlines()) == 1
    result = unmask("fill", str(run), "no mask here")
    assert result.returncode == 1 and "text 1: no mask" in result.stderr

    first = unmask("inspect", "the cat sees the door today.", "--model", str(tokenizer_dir), "--seed", "3", "--mask-prob", "0.5")
    again = unmask("inspect", "the cat sees the door today.", "--model", str(tokenizer_dir), "--seed", "3", "--mask-prob", "0.5")
    assert first.returncode == 0 and first.stdout == again.stdout
    assert "[CLS]" in first.stdout and "label" in first.stdout and "picked" in first.stdout


def test_eval_score_embed_compare_and_plot_commands(tmp_path, store_dir, corpus_dir, tiny_model_dir, capsys):
    import numpy as np

    from unmask.config import TrainConfig
    from unmask.train import train

    run = tmp_path / "run"
    train(
        TrainConfig(data=str(store_dir), out=str(run), model=str(tiny_model_dir), seq_len=32, batch_size=4, max_steps=4, eval_every=2),
        progress=False, echo=lambda _: None,
    )  # fmt: skip

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
    assert main(["embed", str(run), "--tokens", "the cat sees"]) == 0
    assert "[CLS]" in capsys.readouterr().out

    assert main(["compare", str(tiny_model_dir), str(run), "--data", str(store_dir), "--seq-len", "32", "--out", str(tmp_path / "cmp")]) == 0
    report = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert report["base_metrics"]["masked_tokens"] == report["trained_metrics"]["masked_tokens"]
    assert report["base_metrics"]["loss"] != report["trained_metrics"]["loss"]
    assert "| top-1 accuracy |" in (tmp_path / "cmp" / "report.md").read_text()

    assert main(["plot", str(run)]) == 0
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", str(tmp_path)]) == 1
    assert "no metrics.jsonl" in capsys.readouterr().err
