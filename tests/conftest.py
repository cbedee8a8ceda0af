"""Shared fixtures: a generated corpus, a WordPiece tokenizer trained on it, a tiny BERT.

Everything is built offline in a few seconds; no test needs a hub or ../shared.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def served(tmp_path_factory, store_dir, tiny_model_dir):
    """A folder of runs: one finished, one that is 'live' (its metrics.jsonl grows in the tests)."""
    import shutil

    from unmask.config import TrainConfig
    from unmask.pretrain.train import train

    root = tmp_path_factory.mktemp("served") / "runs"
    train(
        TrainConfig(
            data=str(store_dir),
            out=str(root / "finished"),
            model=str(tiny_model_dir),
            seq_len=32,
            batch_size=4,
            max_steps=6,
            eval_every=3,
            log_every=1,
            checkpoint_every=3,
        ),
        progress=False,
        echo=quiet,
    )
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
