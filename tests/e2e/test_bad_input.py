"""Bad input over every command: one clear message naming the file, line or flag, exit code
1 or 2, never a traceback. A property-based sweep finds no crash in masking, windows, readers."""

import dataclasses
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unmask.cli.main import COMMANDS, main

pytestmark = pytest.mark.slow

MINIMAL = {
    "prepare": ["prepare", "x.txt", "--out", "o"],
    "tokenizer": ["tokenizer", "x.txt", "--out", "o"],
    "train": ["train", "--data", "d", "--out", "o", "--model", "m"],
    "fill": ["fill", "m", "a [MASK]."],
    "inspect": ["inspect", "a b"],
    "eval": ["eval", "m", "--data", "d"],
    "score": ["score", "m", "a b"],
    "pairs": ["pairs", "m", "p.jsonl"],
    "embed": ["embed", "m", "--tokens", "a"],
    "compare": ["compare", "a", "b", "--data", "d"],
    "export": ["export", "r", "--out", "o"],
    "plot": ["plot", "r"],
    "serve": ["serve"],
    "finetune": ["finetune", "m", "--train", "t", "--eval", "e", "--out", "o"],
    "probe": ["probe", "m", "--train", "t", "--eval", "e"],
    "downstream": ["downstream", "s", "--models", "m"],
}


def cli(argv, capsys) -> tuple[int, str]:
    """Run the command in-process: (exit code, stderr); a traceback is never an answer to bad input."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def numeric_cases():
    """For every numeric setting of every command, a value out of its range."""
    for command, cls in ((name, c.settings) for name, c in COMMANDS.items()):
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            kinds = typing.get_args(hints[field.name]) or (hints[field.name],)
            if int in kinds:
                yield command, field.name, "-1"
            elif float in kinds:
                yield command, field.name, "-0.5" if "prob" not in field.name and field.name not in ("dropout",) else "1.5"


NUMERIC = list(numeric_cases())


@pytest.mark.parametrize("command,name,value", NUMERIC, ids=[f"{c}--{n}" for c, n, _ in NUMERIC])
def test_every_numeric_setting_out_of_range_is_refused_naming_its_flag(command, name, value, capsys):
    code, err = cli(MINIMAL[command] + [f"--{name.replace('_', '-')}", value], capsys)
    assert code in (1, 2) and f"--{name.replace('_', '-')}" in err, (code, err)


def test_the_sweep_covers_enough_settings():
    assert len(NUMERIC) >= 40, "every command's numbers, and more than forty bad inputs from them alone"


@pytest.fixture
def files(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "empty.txt").write_bytes(b"")
    (folder / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (folder / "latin1.txt").write_bytes(b"good line\ncaf\xe9 au lait\n")
    (folder / "nul.txt").write_bytes(b"a fine line\nanother\x00one\n")
    (folder / "bad.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    (folder / "nofield.jsonl").write_text('{"body": "ok"}\n')
    (folder / "nocolumn.csv").write_text("id,body\n1,hello\n")
    (folder / "nothing").mkdir()
    (folder / "nothing" / "data.bin").write_bytes(b"\x01\x02")
    (folder / "bad.yaml").write_text("data: d\nout: o\nmodel: m\nlearing_rate: 0.1\n")
    (folder / "broken.yaml").write_text("data: [d\n")
    (folder / "list.yaml").write_text("- a\n- b\n")
    (folder / "a-file").write_text("not a folder")
    (folder / "blank.txt").write_text("\n\n")
    (folder / "pairs.jsonl").write_text('{"sentence_good": "a b.", "bad": "b a."}\n')
    return folder


CASES = [
    # files
    (["prepare", "{in}/empty.txt", "--out", "{tmp}/s", "--tokenizer", "{tok}"], 1, r"no non-empty documents"),
    (["prepare", "{in}/binary.txt", "--out", "{tmp}/s", "--tokenizer", "{tok}"], 1, r"binary\.txt: looks like a binary file"),
    (["prepare", "{in}/latin1.txt", "--out", "{tmp}/s", "--tokenizer", "{tok}"], 1, r"latin1\.txt:2: not valid UTF-8 \(byte 0xe9\)"),
    (
        ["prepare", "{in}/nul.txt", "--out", "{tmp}/s", "--tokenizer", "{tok}"],
        1,
        r"nul\.txt: looks like a binary file \(NUL byte on line 2\)",
    ),
    (["prepare", "{in}/*.md", "--out", "{tmp}/s", "--tokenizer", "{tok}"], 1, r"\*\.md: glob matched no files"),
    (["prepare", "{in}/nothing", "--out", "{tmp}/s", "--tokenizer", "{tok}"], 1, r"nothing: folder holds no usable files"),
    (["prepare", "{in}/missing.txt", "--out", "{tmp}/s", "--tokenizer", "{tok}"], 1, r"missing\.txt': no such file or folder"),
    (["prepare", "{in}/bad.jsonl", "--out", "{tmp}/s", "--tokenizer", "{tok}"], 1, r"bad\.jsonl:2: invalid JSON"),
    (
        ["prepare", "{in}/nofield.jsonl", "--out", "{tmp}/s", "--tokenizer", "{tok}"],
        1,
        r"nofield\.jsonl:1: record has no 'text' field \(it has body\)",
    ),
    (
        ["prepare", "{in}/nocolumn.csv", "--out", "{tmp}/s", "--tokenizer", "{tok}"],
        1,
        r"nocolumn\.csv: no column 'text' \(columns: id, body\)",
    ),
    (["prepare", "{in}", "--out", "{in}/store", "--tokenizer", "{tok}", "--skip-bad-files"], 1, r"overlaps the source"),
    (["prepare", "{corpus}", "--out", "{in}/a-file", "--tokenizer", "{tok}"], 1, r"a-file: is a file, not a token store"),
    (["prepare", "{corpus}", "--out", "{tmp}/s", "--tokenizer", "{tmp}/no/such/tokenizer/"], 1, r"no/such/tokenizer/': no such folder"),
    (["tokenizer", "{in}/binary.txt", "--out", "{tmp}/t"], 1, r"binary\.txt: looks like a binary file"),
    # flags: contradictions and nonsense
    (
        ["train", "--data", "d", "--out", "o", "--model", "m", "--from-scratch", "mini"],
        1,
        r"--model: give exactly one of --model or --from-scratch",
    ),
    (["train", "--data", "d", "--out", "o"], 1, r"--model: give exactly one"),
    (
        ["train", "--data", "d", "--out", "o", "--model", "m", "--mask-schedule", "linear"],
        1,
        r"--mask-prob-end: --mask-schedule linear needs",
    ),
    (["train", "--data", "d", "--out", "o", "--model", "m", "--mask-replace-prob", "0.8", "--random-replace-prob", "0.3"], 1, r"at most 1"),
    (["train", "--data", "d", "--out", "o", "--model", "m", "--time-budget", "30"], 1, r"--time-budget: '30' is not a duration"),
    (
        ["train", "--data", "d", "--out", "o", "--from-scratch", "mini", "--seq-len", "100000"],
        1,
        r"--seq-len: 100000 is more than the 8192 tokens unmask trains at",
    ),
    (["train", "--data", "d", "--out", "o", "--model", "m", "--masking", "spans"], 2, r"masking"),
    (["train", "--data", "d", "--out", "o", "--model", "m", "--batch-size", "many"], 2, r"batch_size|batch-size"),
    (["train", "--data", "d", "--out", "o", "--model", "m", "--no-such-flag", "1"], 2, r"no_such_flag|no-such-flag"),
    (["embed", "m", "--file", "f", "--tokens", "t"], 1, r"--file: give --file F or --texts \(sentence embeddings\), or --tokens TEXT"),
    (["embed", "m", "--file", "f"], 1, r"--out: give the \.npy file"),
    # YAML
    (["train", "--config", "{in}/bad.yaml"], 1, r"bad\.yaml: unknown setting\(s\) learing_rate"),
    (["train", "--config", "{in}/broken.yaml"], 1, r"broken\.yaml: cannot read config"),
    (["train", "--config", "{in}/list.yaml"], 1, r"list\.yaml: expected a mapping of settings"),
    (["train", "--config", "{in}/missing.yaml"], 1, r"missing\.yaml: cannot read config"),
    # models and stores
    (["train", "--data", "{in}", "--out", "{tmp}/r", "--model", "{model}"], 1, r"not a token store \(no meta\.json\)"),
    (["train", "--data", "{store}", "--out", "{tmp}/r", "--model", "{tmp}/nowhere/"], 1, r"nowhere/': no such folder"),
    (
        ["train", "--data", "{store}", "--out", "{tmp}/r", "--model", "{in}/nothing"],
        1,
        r"cannot load a masked LM from folder .*nothing': it has no config\.json",
    ),
    (["train", "--data", "{store}", "--out", "{tmp}/r", "--model", "{roberta}"], 1, r"maps text to other ids than the model"),
    (["train", "--data", "{store}", "--out", "{in}/a-file", "--model", "{model}"], 1, r"a-file: is a file, not a run folder"),
    (["fill", "{nomask}", "a b c"], 1, r"has no mask token"),
    (
        ["fill", "{model}", "no mask here"],
        1,
        r"text 1: no mask in 'no mask here' \(write \[MASK\] or <mask>; this model's own is \[MASK\]\)",
    ),
    (["fill", "{model}", "[MASK] " + "the cat " * 200 + "[MASK]"], 1, r"text 1: its masks lie \d+ tokens apart"),
    (["score", "{model}", "the cat " * 200], 1, r"text 1: \d+ tokens, more than the model's 128"),
    (["score", "{model}", "--file", "{in}/blank.txt"], 1, r"no texts to score: .*blank\.txt has no non-blank line"),
    (["embed", "{model}", "--file", "{in}/empty.txt", "--out", "{tmp}/x.npy"], 1, r"empty\.txt: empty, no text to embed"),
    (
        ["embed", "{model}", "--file", "{in}/blank.txt", "--out", "{tmp}/s.txt"],
        1,
        r"--out: .*s\.txt: embeddings are written as \.npy \(or \.npz\), not \.txt; name it .*s\.npy$",
    ),
    (
        ["embed", "{model}", "--file", "{in}/blank.txt", "--out", "{tmp}/no/such/dir/x.npy"],
        1,
        r"--out .*x\.npy: the folder .*dir does not exist",
    ),
    (["compare", "{model}", "{model}", "--data", "{store}", "--out", "{in}/a-file"], 1, r"a-file: is a file; give a folder"),
    (["eval", "{model}", "--data", "{novalstore}"], 1, r"has no 'val' documents .* --split train, or prepare it again with --val-fraction"),
    (["eval", "{model}", "--data", "{store}", "--split", "test"], 2, r"split"),
    (["pairs", "{model}", "{in}/pairs.jsonl"], 1, r"pairs\.jsonl:1: no sentence in 'sentence_bad'"),
    (["export", "{tmp}", "--out", "{tmp}/x"], 1, r"not a run folder unmask can export from"),
    (["plot", "{tmp}"], 1, r"no metrics\.jsonl"),
]


@pytest.fixture(scope="module")
def nomask_dir(tmp_path_factory):
    """A model whose tokenizer has no mask token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4, "b": 5, "c": 6}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path_factory.mktemp("nomask")
    PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    ).save_pretrained(folder)
    BertForMaskedLM(
        BertConfig(vocab_size=7, hidden_size=16, num_hidden_layers=1, num_attention_heads=1, intermediate_size=32)
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def novalstore(tmp_path_factory, corpus_dir, tokenizer_dir):
    from unmask.config import PrepareConfig
    from unmask.data.prepare import prepare

    out = tmp_path_factory.mktemp("noval") / "store"
    prepare(PrepareConfig(sources=[str(corpus_dir)], out=str(out), tokenizer=str(tokenizer_dir), val_fraction=0.0), progress=False)
    return out


@pytest.mark.parametrize("argv,code,message", CASES, ids=[f"{i:02d}-{c[0][0]}" for i, c in enumerate(CASES)])
def test_bad_input_gets_one_clear_message_and_an_exit_code(
    argv, code, message, files, tmp_path, tokenizer_dir, tiny_model_dir, store_dir, corpus_dir, roberta_dir, nomask_dir, novalstore, capsys
):
    import re

    names = dict(
        tmp=tmp_path,
        tok=tokenizer_dir,
        model=tiny_model_dir,
        store=store_dir,
        corpus=corpus_dir,
        roberta=roberta_dir,
        nomask=nomask_dir,
        novalstore=novalstore,
    )
    names["in"] = files
    got, err = cli([a.format(**names) for a in argv], capsys)
    assert got == code and re.search(message, err), (got, err)
    assert sum(line.startswith("unmask") or line.startswith("error:") for line in err.splitlines()) >= 1


def test_the_battery_has_over_forty_cases():
    assert len(CASES) + len(NUMERIC) >= 80 and len(CASES) >= 40


def test_a_ten_megabyte_line_is_read(tmp_path, tokenizer_dir, capsys):
    (tmp_path / "long.txt").write_text("the cat sees the door " * 460_000 + "\n")
    code, _ = cli(["prepare", tmp_path / "long.txt", "--out", tmp_path / "s", "--tokenizer", tokenizer_dir, "--val-fraction", "0"], capsys)
    assert code == 0


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to run a command as another user")
def test_permission_denied_names_the_file(tmp_path, tokenizer_dir):
    """As root everything is readable, so the command runs as `nobody`."""
    shared = Path("/tmp") / f"unmask-perm-{os.getpid()}"
    shared.mkdir(exist_ok=True)
    shared.chmod(0o777)  # mkdir's mode is cut by the umask
    try:
        secret = shared / "secret.txt"
        secret.write_text("text nobody may read")
        secret.chmod(0o000)
        tokenizer = shared / "tok"
        shutil.copytree(tokenizer_dir, tokenizer)
        os.chmod(tokenizer, 0o755)
        for f in tokenizer.iterdir():
            f.chmod(0o644)
        env = {**os.environ, "HOME": str(shared), "HF_HOME": str(shared / "hf")}
        result = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                sys.executable,
                "-m",
                "unmask",
                "prepare",
                str(secret),
                "--out",
                str(shared / "store"),
                "--tokenizer",
                str(tokenizer),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=180,
        )
        if "Permission denied" in result.stderr and "python" in result.stderr.lower() and "unmask" not in result.stderr:
            pytest.skip(f"nobody cannot run this venv's python: {result.stderr[-300:]}")
        assert result.returncode == 1 and "secret.txt: permission denied (cannot read)" in result.stderr, result.stderr[-1500:]
        assert "Traceback" not in result.stderr
        locked = shared / "locked"
        locked.mkdir(mode=0o755)  # root's: nobody may not write in it
        (shared / "readable.txt").write_text("text anybody may read\n" * 20)
        result = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                sys.executable,
                "-m",
                "unmask",
                "prepare",
                str(shared / "readable.txt"),
                "--out",
                str(locked / "store"),
                "--tokenizer",
                str(tokenizer),
                "--val-fraction",
                "0",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=180,
        )
        assert result.returncode == 1 and f"{locked}" in result.stderr and "permission denied" in result.stderr, result.stderr[-1500:]
        assert "Traceback" not in result.stderr
    finally:
        shutil.rmtree(shared, ignore_errors=True)


# ------------------------------------------------------------------ property-based: no crash


VOCAB_SIZE = 50


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.integers(1, 6),
    length=st.integers(3, 40),
    strategy=st.sampled_from(["token", "whole-word", "span"]),
    mask_prob=st.floats(0.01, 0.99),
    replace=st.floats(0, 1),
    seed=st.integers(0, 2**40),
    data=st.data(),
)
def test_masking_never_crashes_and_keeps_its_contract(rows, length, strategy, mask_prob, replace, seed, data):
    from unmask.data.masking import IGNORE_INDEX, Masker
    from unmask.data.tokenizer import Vocabulary

    vocab = Vocabulary(
        size=VOCAB_SIZE, special_ids=(0, 1, 2, 3, 4), mask_id=4, opener_id=2, closer_id=3, pad_id=0, starts_word=np.ones(VOCAB_SIZE, bool)
    )
    ids = torch.tensor(
        data.draw(st.lists(st.lists(st.integers(0, VOCAB_SIZE - 1), min_size=length, max_size=length), min_size=rows, max_size=rows))
    )
    attention = torch.tensor(
        data.draw(st.lists(st.lists(st.integers(0, 1), min_size=length, max_size=length), min_size=rows, max_size=rows))
    )
    starts = torch.tensor(data.draw(st.lists(st.lists(st.booleans(), min_size=length, max_size=length), min_size=rows, max_size=rows)))
    starts[:, 0] = True
    masker = Masker(vocab, seed=seed, strategy=strategy, mask_prob=mask_prob, mask_replace_prob=replace, random_replace_prob=1 - replace)
    drawn = masker(ids, attention, torch.arange(rows) * 7 + seed % 97, torch.full((rows,), seed % 5), word_starts=starts)
    picked = drawn.labels != IGNORE_INDEX
    special = torch.isin(ids, torch.tensor(vocab.special_ids))
    assert not (picked & (special | (attention == 0))).any()
    assert torch.equal(drawn.labels[picked], ids[picked]) and torch.equal(drawn.input_ids[~picked], ids[~picked])
    assert not torch.isin(drawn.input_ids[drawn.became_random], torch.tensor(vocab.special_ids)).any()


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 30), min_size=1, max_size=8), seq_len=st.integers(3, 20), packing=st.sampled_from(["packed", "padded"])
)
def test_windows_never_crash_and_frame_every_window(lengths, seq_len, packing):
    from unmask.data.store import Split
    from unmask.data.tokenizer import Vocabulary
    from unmask.data.windows import Windows

    vocab = Vocabulary(size=30, special_ids=(0, 1, 2, 3), mask_id=1, opener_id=2, closer_id=3, pad_id=0, starts_word=np.ones(30, bool))
    documents = [np.r_[np.arange(5, 5 + n) % 25 + 5, 3] for n in lengths]
    tokens = np.concatenate(documents).astype(np.uint16)
    offsets = np.r_[0, np.cumsum([len(d) for d in documents])]
    starts = np.packbits(np.ones(len(tokens), bool))
    windows = Windows.build(Split(tokens, offsets, starts), seq_len, vocab, packing=packing, keep_partial=True)
    if len(windows):
        ids, attention, words = windows.batch(np.arange(len(windows)))
        assert ids.shape == (len(windows), seq_len) and (ids[:, 0] == 2).all()
        for row in range(len(windows)):
            real = int(attention[row].sum())
            assert ids[row, real - 1] == 3 and (ids[row, real:] == 0).all() and words[row].all()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    content=st.binary(max_size=300),
    suffix=st.sampled_from([".txt", ".jsonl", ".csv", ".tsv", ".txt.gz"]),
    doc_per=st.sampled_from(["file", "blank-line", "line"]),
)
def test_readers_never_crash_on_arbitrary_bytes(tmp_path, content, suffix, doc_per):
    import gzip

    from unmask.config import UnmaskError
    from unmask.data.sources import ReadOptions, ReadReport, classify, read_documents

    path = tmp_path / f"input{suffix}"
    path.write_bytes(gzip.compress(content) if suffix.endswith(".gz") else content)
    try:
        texts = [t for _, t in read_documents([classify(path)], ReadReport(), ReadOptions(doc_per=doc_per))]
        assert all(isinstance(t, str) and t.strip() for t in texts)
    except UnmaskError as e:
        assert str(path) in str(e), "the message names the file"
