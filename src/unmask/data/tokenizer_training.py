"""`unmask tokenizer`: train a vocabulary of one's own with the `tokenizers` library, from the
sources `prepare` reads. (`tokenizer.Vocabulary` is the record of a tokenizer's ids; this
module makes new tokenizers.)

Three families, each with the special tokens and framing of the models that use it:
- `wordpiece` (BERT): `[CLS] ... [SEP]`, `[PAD]` `[UNK]` `[MASK]`, `##` continuations;
- `bpe` (RoBERTa): byte-level BPE, `<s> ... </s>`, `<pad>` `<unk>` `<mask>`, `Ġ` word starts;
- `unigram` (SentencePiece, as XLM-R and ALBERT): `▁` word starts, `<s> ... </s>`, `<mask>`.

The folder written loads with `AutoTokenizer.from_pretrained`, works as `prepare
--tokenizer DIR` and `train --from-scratch PRESET --tokenizer DIR`, and travels inside the
final model folder, so `pipeline("fill-mask")` uses it.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from unmask.config import TokenizerConfig, parse_sources, parse_weights
from unmask.data.sources import ReadOptions, ReadReport, expand_sources, read_documents
from unmask.errors import UnmaskError, option, setting
from unmask.storage.files import building, recover_folder
from unmask.storage.names import quiet_transformers

SPECIAL_TOKENS = {
    "wordpiece": {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
    # RoBERTa's order: <s>=0, <pad>=1, </s>=2, <unk>=3.
    "bpe": {"cls": "<s>", "pad": "<pad>", "sep": "</s>", "unk": "<unk>", "mask": "<mask>"},
    "unigram": {"cls": "<s>", "pad": "<pad>", "sep": "</s>", "unk": "<unk>", "mask": "<mask>"},
}


def _pipeline(kind: str, lowercase: bool):
    """An untrained Rust tokenizer with the family's normalizer, pre-tokenizer and decoder, and its trainer class."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    specials = SPECIAL_TOKENS[kind]
    if kind == "wordpiece":
        raw = Tokenizer(models.WordPiece(unk_token=specials["unk"], continuing_subword_prefix="##"))
        raw.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
        raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        raw.decoder = decoders.WordPiece(prefix="##")
        return raw, trainers.WordPieceTrainer
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    if kind == "bpe":
        raw = Tokenizer(models.BPE(unk_token=None))
        raw.normalizer = normalizers.Sequence(steps)
        raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        raw.decoder = decoders.ByteLevel()
        return raw, trainers.BpeTrainer
    raw = Tokenizer(models.Unigram())
    raw.normalizer = normalizers.Sequence(steps)
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    raw.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return raw, trainers.UnigramTrainer


def _special_tokens(kind: str) -> list:
    from tokenizers import AddedToken

    # `<mask>` swallows the space before it, as RoBERTa's does: "a <mask> b" masks the word, not " ".
    return [
        AddedToken(token, lstrip=kind != "wordpiece" and name == "mask", rstrip=False, normalized=False, special=True)
        for name, token in SPECIAL_TOKENS[kind].items()
    ]


def _trainer(kind: str, trainer_class, config: TokenizerConfig):
    from tokenizers import pre_tokenizers

    specials = _special_tokens(kind)
    if kind == "unigram":
        return trainer_class(vocab_size=config.vocab_size, special_tokens=specials, unk_token="<unk>", show_progress=False)
    options = dict(vocab_size=config.vocab_size, min_frequency=config.min_frequency, special_tokens=specials, show_progress=False)
    if kind == "bpe":
        options["initial_alphabet"] = pre_tokenizers.ByteLevel.alphabet()
    return trainer_class(**options)


def _post_processor(kind: str, raw):
    from tokenizers import processors

    specials = SPECIAL_TOKENS[kind]
    cls, sep = specials["cls"], specials["sep"]
    cls_id, sep_id = raw.token_to_id(cls), raw.token_to_id(sep)
    if kind == "wordpiece":
        return processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1", special_tokens=[(cls, cls_id), (sep, sep_id)]
        )
    if kind == "bpe":
        return processors.RobertaProcessing((sep, sep_id), (cls, cls_id), trim_offsets=True, add_prefix_space=False)
    return processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} {sep} $B {sep}", special_tokens=[(cls, cls_id), (sep, sep_id)]
    )


def as_transformers_tokenizer(kind: str, raw, model_max_length: int = 512):
    """The trained Rust tokenizer as a transformers tokenizer with its special tokens named."""
    quiet_transformers()
    from transformers import PreTrainedTokenizerFast

    tokens = dict(zip(SPECIAL_TOKENS[kind], _special_tokens(kind)))
    extra = {} if kind == "wordpiece" else {"bos_token": tokens["cls"], "eos_token": tokens["sep"]}
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token=tokens["unk"],
        pad_token=tokens["pad"],
        cls_token=tokens["cls"],
        sep_token=tokens["sep"],
        mask_token=tokens["mask"],
        model_max_length=model_max_length,
        **extra,
    )


def mixed_documents(config: TokenizerConfig, report: ReadReport) -> Iterator[str]:
    """Documents of the named sources in the shares --mix gives: each next document comes from
    a source drawn by weight (seeded), and a source read through starts again, until every
    source with a weight has been read through once."""
    named = parse_sources(config.sources)
    weights = parse_weights(config.mix, [name for name, _ in named])
    streams: dict[str, Iterator[str]] = {}
    finished: set[str] = set()
    wanted = {name for (name, _), w in zip(named, weights) if w > 0}
    chance = random.Random(0)
    while finished < wanted:
        name, source = chance.choices(named, weights)[0]
        for _ in range(2):  # a source read through starts over once before it is counted done
            if name not in streams:
                streams[name] = (text for _, text in read_documents(expand_sources([source]), report, ReadOptions.of(config)))
            text = next(streams[name], None)
            if text is not None:
                yield text
                break
            finished.add(name)
            del streams[name]
        else:
            raise UnmaskError(f"{source}: no non-empty documents to learn a vocabulary from")


def is_tokenizer_folder(path: Path) -> bool:
    return (path / "tokenizer.json").is_file() and (path / "tokenizer_config.json").is_file()


def train_tokenizer(config: TokenizerConfig, progress: bool = True) -> dict:
    """Train, then write the tokenizer folder to `config.out`; returns a summary."""
    from tqdm import tqdm

    out = Path(config.out)
    recover_folder(out)
    if out.exists() and not (config.overwrite and is_tokenizer_folder(out)):
        reason = (
            f"is not a tokenizer folder; {setting('overwrite')} only ever replaces one"
            if config.overwrite
            else f"already exists (pass {option('overwrite')} to replace it)"
        )
        raise UnmaskError(f"{option('out', str(out))}: {reason}")
    sources = expand_sources([source for _, source in parse_sources(config.sources)] if config.mix else config.sources)
    raw, trainer_class = _pipeline(config.kind, config.lowercase)
    report = ReadReport()
    bar = tqdm(total=config.max_docs, unit="doc", desc="read", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    counted = {"documents": 0, "characters": 0}

    def texts() -> Iterator[str]:
        stream = (
            mixed_documents(config, report) if config.mix else (text for _, text in read_documents(sources, report, ReadOptions.of(config)))
        )
        for text in stream:
            counted["documents"] += 1
            counted["characters"] += len(text)
            bar.update(1)
            yield text
            if config.max_docs is not None and counted["documents"] >= config.max_docs:
                return

    started = time.perf_counter()
    try:
        raw.train_from_iterator(texts(), _trainer(config.kind, trainer_class, config))
    finally:  # before an error is printed, so the bar does not run into it
        bar.close()
    if counted["documents"] == 0:
        raise UnmaskError(f"{', '.join(config.sources)}: no non-empty documents to learn a vocabulary from")
    raw.post_processor = _post_processor(config.kind, raw)
    tokenizer = as_transformers_tokenizer(config.kind, raw)
    seconds = time.perf_counter() - started

    with building(out, "the tokenizer", tag="building") as folder:
        tokenizer.save_pretrained(folder)
        summary = {
            "kind": config.kind,
            "vocab_size": len(tokenizer),
            "lowercase": config.lowercase,
            "min_frequency": config.min_frequency,
            "documents": counted["documents"],
            "characters": counted["characters"],
            "seconds": round(seconds, 2),
            "sources": config.sources,
            "skipped": {"empty_files": len(report.empty_files), "bad_files": report.bad_files, "empty_documents": report.empty_documents},
        }
        (folder / "unmask_tokenizer.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
