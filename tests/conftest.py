"""Shared fixtures: a generated corpus, a WordPiece tokenizer trained on it, a tiny BERT.

Everything is built offline in a few seconds; no test needs a hub or ../shared.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from torch.utils._python_dispatch import TorchDispatchMode

# Tests never reach a hub: everything they load is built here, in local folders.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SUBJECTS = ["the cat", "a dog", "the teacher", "my sister", "the old man", "a small bird", "the python program", "our team"]
VERBS = ["sees", "likes", "finds", "writes", "reads", "builds", "follows", "opens"]
OBJECTS = ["the door", "a book", "the garden", "a letter", "the river", "a new function", "the window", "some bread"]
ENDINGS = ["today", "every morning", "in the park", "at night", "with care", "again", "quickly", "before lunch"]


def make_sentences(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)}." for _ in range(count)]


def make_documents(count: int, sentences_per_doc: int = 12, seed: int = 0) -> list[str]:
    return [" ".join(make_sentences(sentences_per_doc, seed * 1000 + i)) for i in range(count)]


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for i, text in enumerate(make_documents(40)):
        (folder / f"doc{i:03d}.txt").write_text(text + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    raw = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    raw.normalizer = normalizers.BertNormalizer(lowercase=True)
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    raw.decoder = decoders.WordPiece()
    raw.train_from_iterator(make_documents(40), trainers.WordPieceTrainer(vocab_size=110, special_tokens=specials))
    cls_id, sep_id = raw.token_to_id("[CLS]"), raw.token_to_id("[SEP]")
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(folder)
    return folder


def tiny_bert(vocab_size: int, seed: int = 0, max_positions: int = 128):
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        pad_token_id=0,
    )
    return BertForMaskedLM(config)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    folder = tmp_path_factory.mktemp("tiny-bert")
    tiny_bert(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory, corpus_dir, tokenizer_dir) -> Path:
    from unmask.config import PrepareConfig
    from unmask.data.prepare import prepare

    out = tmp_path_factory.mktemp("stores") / "tiny"
    prepare(PrepareConfig(sources=[str(corpus_dir)], out=str(out), tokenizer=str(tokenizer_dir), val_fraction=0.1), progress=False)
    return out


@pytest.fixture(scope="session")
def roberta_dir(tmp_path_factory) -> Path:
    """A tiny RoBERTa with a byte-level BPE tokenizer: <s> ... </s> framing, <mask>, pad id 1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaForMaskedLM

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(make_documents(40), trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    raw.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=64,
    )
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=66,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    folder = tmp_path_factory.mktemp("tiny-roberta")
    RobertaForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def distilbert_dir(tmp_path_factory, tokenizer_dir) -> Path:
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = DistilBertConfig(
        vocab_size=len(tokenizer), dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128, pad_token_id=0
    )
    folder = tmp_path_factory.mktemp("tiny-distilbert")
    DistilBertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def quiet(_: str) -> None:
    """An `echo` that swallows messages."""


REPO = Path(__file__).resolve().parent.parent
"""The repository's root (README.md, src/, docs/)."""


def train_settings(store, model, out, **overrides) -> dict:
    """The tiny run the tests train, as keyword settings: 6 steps of 4 windows of 32 tokens,
    evaluated and checkpointed every 3. `overrides` change any; an override of None leaves that
    setting at its default (given to nobody), and `model=None` with `from_scratch=...` builds one."""
    values = dict(
        data=str(store),
        out=str(out),
        model=None if model is None else str(model),
        seq_len=32,
        batch_size=4,
        max_steps=6,
        lr=1e-3,
        warmup_steps=1,
        log_every=1,
        eval_every=3,
        checkpoint_every=3,
    )
    return {key: value for key, value in {**values, **overrides}.items() if value is not None}


def train_config(store, model, out, **overrides):
    """`train_settings` as a TrainConfig."""
    from unmask.config import TrainConfig

    return TrainConfig(**train_settings(store, model, out, **overrides))


def as_flags(settings: dict) -> list[str]:
    """Settings as command-line flags (`--seq-len 32 ...`), for a subprocess or torchrun."""
    return [item for key, value in settings.items() for item in (f"--{key.replace('_', '-')}", str(value))]


@pytest.fixture(scope="session")
def served(tmp_path_factory, store_dir, tiny_model_dir):
    """A folder of runs: one finished, one that is 'live' (its metrics.jsonl grows in the tests)."""
    import shutil

    from unmask.pretrain.train import train

    root = tmp_path_factory.mktemp("served") / "runs"
    train(train_config(store_dir, tiny_model_dir, root / "finished", lr=None, warmup_steps=None), progress=False, echo=quiet)
    live = root / "team" / "live"
    live.mkdir(parents=True)
    shutil.copy(root / "finished" / "config.yaml", live / "config.yaml")
    (live / "metrics.jsonl").write_text("".join(line + "\n" for line in (root / "finished" / "metrics.jsonl").read_text().splitlines()[:3]))
    (root.parent / "secret.txt").write_text("not to be served")
    return root


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def served_live(served, tmp_path_factory):
    """The live server's own copy of the served folder: the browser tests grow its metrics."""
    import shutil

    copy = tmp_path_factory.mktemp("served-live") / "served"
    shutil.copytree(served.parent, copy)
    return copy / served.name


@pytest.fixture(scope="session")
def live_server(served_live, tiny_model_dir):
    """uvicorn in a thread, on 127.0.0.1 and a free port."""
    import threading
    import time

    import uvicorn

    from unmask.config import ServeConfig
    from unmask.serve.app import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(ServeConfig(paths=[str(served_live)], models=[str(tiny_model_dir)], device="cpu")),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


ANIMALS = ("cat", "dog", "bird")
"""What the labelled-task records call an animal."""


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def classification_records(count: int, seed: int = 0) -> list[dict]:
    return [{"text": s, "label": "animal" if any(a in s for a in ANIMALS) else "person"} for s in make_sentences(count, seed)]


def tagging_records(count: int, seed: int = 0) -> list[dict]:
    records = []
    for sentence in make_sentences(count, seed):
        words = sentence.rstrip(".").split()
        tags = ["B-ANI" if w in ANIMALS else "O" for w in words]
        records.append({"tokens": words, "tags": tags})
    return records


class DeviceReads(TorchDispatchMode):
    """Counts the operations that make the host wait for a device: a value read back, a size
    only the device knows (nonzero, boolean indexing)."""

    READS = {"_local_scalar_dense", "item", "nonzero", "masked_select", "is_nonzero", "equal"}

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in self.READS:
            self.seen.append(func.__name__)
        return func(*args, **(kwargs or {}))


def lines_file(folder: Path, count: int = 600, sentences_per_doc: int = 2, seed: int = 3) -> Path:
    """A file of `count` documents, one a line (600: blocks of 256 documents fall on several shards)."""
    (folder / "docs.txt").write_text("\n".join(make_documents(count, sentences_per_doc=sentences_per_doc, seed=seed)) + "\n")
    return folder / "docs.txt"


def prepare_lines(source, out, tokenizer_dir, **options) -> dict:
    """`unmask prepare` of `source` a document a line, 10% held out, in one process; `options` change any setting."""
    from unmask.config import PrepareConfig
    from unmask.data.prepare import prepare

    values = dict(sources=[str(source)], out=str(out), tokenizer=str(tokenizer_dir), doc_per="line", val_fraction=0.1, workers=1)
    return prepare(PrepareConfig(**{**values, **options}), progress=False)
