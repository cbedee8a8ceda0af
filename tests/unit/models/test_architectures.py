"""The architectures built from scratch, documents kept apart in packed windows, and longer contexts."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

from unmask.cli.main import main
from unmask.config import ARCHITECTURE_NAMES, TrainConfig
from unmask.data.masking import IGNORE_INDEX
from unmask.data.tokenizer import Vocabulary
from unmask.errors import UnmaskError
from unmask.models.architectures import ARCHITECTURES, SCRATCH_CLASSES, document_ids, document_mask, document_positions
from unmask.models.masked_lm import build_config, build_mlm, extend_positions, load_mlm
from unmask.pretrain.train import train

ARCHS = list(SCRATCH_CLASSES)


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def vocab(tokenizer_dir) -> Vocabulary:
    return Vocabulary.from_tokenizer(AutoTokenizer.from_pretrained(tokenizer_dir))


def test_the_scratch_names_are_the_configs_names():
    assert tuple(SCRATCH_CLASSES) == ARCHITECTURE_NAMES
    assert all(ARCHITECTURES[cls].scratch is not None for cls in SCRATCH_CLASSES.values())


def test_document_ids_positions_and_mask_of_a_packed_window():
    # [CLS] a a [SEP] b b b [SEP] c [SEP] [PAD] [PAD]  with [CLS]=2, [SEP]=3, [PAD]=0
    ids = torch.tensor([[2, 7, 8, 3, 9, 9, 9, 3, 7, 3, 0, 0]])
    attention = torch.tensor([[1] * 10 + [0] * 2])
    documents = document_ids(ids, attention, separator_id=3)
    assert documents.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 12, 12]]
    assert document_positions(documents).tolist() == [[0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 0, 1]]
    mask = document_mask(documents)[0, 0]
    assert mask[1, 3] and not mask[1, 4] and mask[5, 7] and not mask[8, 7] and not mask[9, 10] and mask[10, 11]
    assert mask.diagonal().all(), "every position attends at least to itself (no empty softmax row)"


def _packed(vocab: Vocabulary, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, list[slice]]:
    generator = torch.Generator().manual_seed(seed)
    pieces, spans, start = [torch.tensor([vocab.opener_id])], [], 0
    for number, length in enumerate(lengths):
        body = torch.randint(10, vocab.size, (length,), generator=generator)
        pieces += [body, torch.tensor([vocab.closer_id])]
        end = start + length + 1 + (1 if number == 0 else 0)
        spans.append(slice(start, end))
        start = end
    return torch.cat(pieces)[None], spans


@pytest.mark.parametrize("arch", ARCHS)
def test_documents_apart_see_exactly_what_each_document_alone_sees(arch, vocab):
    lm = build_mlm("tiny", vocab, 64, seed=0, arch=arch).eval()
    if arch == "modernbert":
        lm.config.local_attention = 8  # a sliding window shorter than the documents, so that it matters
    ids, spans = _packed(vocab, [11, 15, 5])
    documents = document_ids(ids, torch.ones_like(ids), vocab.closer_id)
    with torch.no_grad():
        packed = lm.hidden_states(ids, None, documents)[0]
        alone = torch.cat([lm.hidden_states(ids[:, span], None)[0] for span in spans])
        crossing = lm.hidden_states(ids, None)[0]
        picked = torch.zeros_like(ids, dtype=torch.bool)
        picked[0, [3, 16, 30]] = True
        sparse = lm.masked_logits(ids, None, picked, documents)
        # A padded second row: its real tokens must come out as in the unpadded row.
        padded_ids = torch.cat([ids, ids])
        padding = torch.ones_like(padded_ids)
        padding[1, spans[1].stop :] = 0
        padded_ids[1, spans[1].stop :] = vocab.pad_id
        padded = lm.hidden_states(padded_ids, padding, document_ids(padded_ids, padding, vocab.closer_id))
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sparse, lm._head(alone[[3, 16, 30]]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded[1, : spans[1].stop], packed[: spans[1].stop], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(padded).all()
    assert not torch.allclose(crossing, alone, atol=1e-3), "attending across documents must differ, or the test shows nothing"


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_the_masked_only_last_layer_keeps_documents_apart_in_its_gradients(arch, vocab):
    lm = build_mlm("tiny", vocab, 64, seed=0, arch=arch).train()
    from unmask.models.masked_lm import set_dropout

    set_dropout(lm.model, 0.0)
    ids, _ = _packed(vocab, [9, 12, 6], seed=1)
    ids = torch.cat([ids, ids.flip(1)])
    documents = document_ids(ids, torch.ones_like(ids), vocab.closer_id)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, [2, 5, 14, 20, 25]] = ids[:, [2, 5, 14, 20, 25]]
    grads = []
    for masked_only in (True, False):
        lm.zero_grad()
        saved = lm._final_layer
        if not masked_only:
            lm._final_layer = None
        loss, _ = lm.loss_sum(ids, None, labels, None, documents)
        loss.backward()
        lm._final_layer = saved
        grads.append({n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("arch", ARCHS)
def test_each_architecture_trains_from_scratch_and_fills_masks_in_transformers(arch, store_dir, tmp_path, tokenizer_dir):
    from transformers import pipeline

    out = tmp_path / arch
    summary = train(
        TrainConfig(
            data=[str(store_dir)],
            out=str(out),
            from_scratch=f"{arch}-tiny",
            seq_len=32,
            batch_size=4,
            max_steps=3,
            eval_every=0,
            attention_across_docs=arch != "bert",  # both ways, across the four
        ),
        progress=False,
        echo=quiet,
    )
    assert summary["steps"] == 3 and summary["eval_loss"] > 0
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architectures"] == [SCRATCH_CLASSES[arch]]
    fill = pipeline("fill-mask", model=str(out / "model"), tokenizer=str(out / "model"), device="cpu")
    candidates = fill("the cat [MASK] the door.")
    assert len(candidates) == 5 and all(c["token_str"] for c in candidates)
    # And back into unmask, with its sparse head equal to the model's own dense logits.
    lm = load_mlm(str(out / "model"), echo=quiet).eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    ids = tokenizer(["the cat [MASK] the door.", "a dog likes [MASK] book today."], padding=True, return_tensors="pt")
    picked = ids["input_ids"] == tokenizer.mask_token_id
    with torch.no_grad():
        dense = lm.model(**ids).logits[picked]
        sparse = lm.masked_logits(ids["input_ids"], ids["attention_mask"], picked)
    torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_extending_learned_positions_keeps_the_old_positions_outputs(arch, vocab, tmp_path):
    lm = build_mlm("tiny", vocab, 64, seed=0, arch=arch).eval()
    ids = torch.randint(10, vocab.size, (2, 40))
    with torch.no_grad():
        before = lm.hidden_states(ids, None)
    had = lm.config.max_position_embeddings
    line = extend_positions(lm, 700)
    assert line is not None and "to 700" in line
    table = ARCHITECTURES[SCRATCH_CLASSES[arch]].position_table(lm.model)
    reserved = ARCHITECTURES[SCRATCH_CLASSES[arch]].reserved_positions(lm.config)
    assert table.num_embeddings == 700 + reserved == lm.config.max_position_embeddings
    torch.testing.assert_close(table.weight[had], table.weight[reserved], msg="new positions start as copies")
    long_ids = torch.randint(10, vocab.size, (1, 700))
    with torch.no_grad():
        after = lm.hidden_states(ids, None)
        assert lm.hidden_states(long_ids, None).shape == (1, 700, lm.config.hidden_size)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    lm.model.save_pretrained(tmp_path)
    again = load_mlm(str(tmp_path), echo=quiet).eval()
    with torch.no_grad():
        torch.testing.assert_close(again.hidden_states(ids, None), before, rtol=1e-6, atol=1e-6)


def test_rotary_and_relative_positions_need_no_table_and_a_new_rope_base_changes_what_it_should(vocab, tmp_path):
    deberta = build_mlm("tiny", vocab, 64, seed=0, arch="deberta-v2").eval()
    ids = torch.randint(10, vocab.size, (1, 48))
    with torch.no_grad():
        before = deberta.hidden_states(ids, None)
        assert extend_positions(deberta, 2048) is None
        torch.testing.assert_close(deberta.hidden_states(ids, None), before, rtol=0, atol=0)

    modern = build_mlm("tiny", vocab, 64, seed=0, arch="modernbert").eval()
    modern.model.save_pretrained(tmp_path)
    with torch.no_grad():
        before = modern.hidden_states(ids, None)
        same = load_mlm(str(tmp_path), echo=quiet, seq_len=4096).eval().hidden_states(ids, None)
        rebased = load_mlm(str(tmp_path), echo=quiet, seq_len=4096, rope_theta=160_000).eval()
        moved = rebased.hidden_states(ids, None)
    torch.testing.assert_close(same, before, rtol=1e-6, atol=1e-6)
    assert rebased.config.rope_parameters["full_attention"]["rope_theta"] == 160_000
    assert rebased.config.rope_parameters["sliding_attention"]["rope_theta"] == 10_000, "only the global layers' base moves"
    assert not torch.allclose(moved, before, atol=1e-4), (
        "a new RoPE base changes every position but the first (rotary promises nothing more)"
    )


def test_a_run_continued_at_a_longer_context_is_scored_at_both_lengths(store_dir, tmp_path):
    first = tmp_path / "short"
    base = dict(data=[str(store_dir)], batch_size=4, max_steps=2, eval_every=0, seed=0)
    train(TrainConfig(**base, out=str(first), from_scratch="tiny", seq_len=16), progress=False, echo=quiet)
    lines: list[str] = []
    longer = tmp_path / "long"
    summary = train(TrainConfig(**base, out=str(longer), model=str(first), seq_len=48), progress=False, echo=lines.append)
    assert any("evaluating at both" in line for line in lines), lines
    assert any(line.startswith("plan: memory per process") and "a window of 48 tokens" in line for line in lines), lines
    assert "eval_loss" in summary and "eval_loss@len16" in summary
    assert summary["eval_loss@len16"] != summary["eval_loss"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--from-scratch", "tiny", "--rope-theta", "160000"], "has learned positions, not rotary ones"),
        (["--from-scratch", "modernbert-tiny", "--arch", "bert"], "--arch: bert, but --from-scratch modernbert-tiny names modernbert"),
        (["--from-scratch", "tiny", "--recipe", "bert-in-a-day"], "no recipe 'bert-in-a-day' (choose from modernbert, mosaicbert"),
        (["--from-scratch", "tiny", "--seq-len", "16384"], "more than the 8192 tokens unmask trains at"),
    ],
)
def test_bad_architecture_settings_are_one_line_each_before_any_model(argv, message, store_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data", str(store_dir), "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert code == 1 and message in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists(), "nothing written before the settings are refused"


def test_an_unknown_size_is_a_usage_error(store_dir, tmp_path, capsys):
    assert main(["train", "--data", str(store_dir), "--out", str(tmp_path / "r"), "--from-scratch", "gigantic"]) == 2
    assert "give a size (tiny, mini, small, base, large) or ARCH-SIZE" in capsys.readouterr().err


def test_rope_theta_for_a_loaded_model_without_rotary_positions_is_refused_before_loading(tiny_model_dir, store_dir, tmp_path, capsys):
    code = main(["train", "--data", str(store_dir), "--out", str(tmp_path / "r"), "--model", str(tiny_model_dir), "--rope-theta", "1e5"])
    err = capsys.readouterr().err
    assert code == 1 and "(bert) has learned positions, not rotary ones; a RoPE base applies to modernbert" in err, err


def test_a_vocabulary_that_cannot_hold_the_special_ids_is_refused(vocab):
    import dataclasses

    small = dataclasses.replace(vocab, size=3)  # [CLS]=2 fits, [SEP]=3 does not
    with pytest.raises(UnmaskError, match="--arch roberta: the tokenizer's closer id is 3, outside its vocabulary of 3"):
        build_config("roberta", "tiny", small, 64)
    with pytest.raises(UnmaskError, match="--arch modernbert: the tokenizer's closer id"):
        build_config("modernbert", "tiny", small, 64)


def test_sizes_follow_each_familys_published_shapes(vocab):
    assert build_config("modernbert", "base", vocab, 1024).num_hidden_layers == 22
    assert build_config("modernbert", "base", vocab, 1024).intermediate_size == 1152
    assert build_config("modernbert", "large", vocab, 1024).intermediate_size == 2624
    assert build_config("bert", "large", vocab, 512).num_hidden_layers == 24
    deberta = build_config("deberta-v2", "base", vocab, 512)
    assert deberta.position_biased_input is False and deberta.relative_attention and deberta.position_buckets == 256
    modern = build_config("modernbert", "tiny", vocab, 128)
    assert modern.rope_parameters["full_attention"]["rope_theta"] == 10_000, "ModernBERT pretrained at 10,000 before extending"
    assert build_config("modernbert", "tiny", vocab, 128, rope_theta=160_000).rope_parameters["full_attention"]["rope_theta"] == 160_000
