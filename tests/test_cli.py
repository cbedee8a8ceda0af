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
