"""The attention paths: which one runs, the spans of a packed or padded batch, and the unpadded
paths giving what masked SDPA gives (loss and gradients) for BERT, RoBERTa and ModernBERT.

torch's varlen kernel runs on CUDA only, so here a reference (SDPA over each span on its own,
with the same window rule) stands in for the kernel: what is tested is everything unmask does
around it, the flattening, the spans, the windows and the wiring through transformers.
FlexAttention has no backward on a CPU: its forward is compared here.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM, DebertaV2ForMaskedLM, ModernBertForMaskedLM

from unmask.data.masking import IGNORE_INDEX
from unmask.data.tokenizer import Vocabulary
from unmask.errors import UnmaskError
from unmask.models import attention
from unmask.models.architectures import document_ids
from unmask.models.attention import choose_attention, padded_spans, spans_of
from unmask.models.masked_lm import MaskedLM, build_config, set_dropout

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(scope="module")
def vocab(tokenizer_dir) -> Vocabulary:
    return Vocabulary.from_tokenizer(AutoTokenizer.from_pretrained(tokenizer_dir))


# ---------------------------------------------------------------- spans


def test_spans_cut_at_every_document_and_every_row():
    documents = np.array([[0, 0, 1, 1, 1, 2], [0, 0, 0, 0, 6, 6]])  # row 2 ends in padding (a document of its own)
    spans = spans_of(documents)
    assert spans.cu.tolist() == [0, 2, 5, 6, 10, 12] and spans.cu.dtype == torch.int32 and spans.longest == 4
    assert spans_of(torch.from_numpy(documents)).cu.tolist() == spans.cu.tolist()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=6), min_size=1, max_size=4))
def test_spans_hold_each_documents_tokens_once_in_order(rows):
    length = max(sum(row) for row in rows)
    documents = np.full((len(rows), length), 99)
    for r, row in enumerate(rows):
        documents[r, : sum(row)] = np.repeat(np.arange(len(row)), row)
    cu = spans_of(documents).cu.numpy()
    expected = [n for r, row in enumerate(rows) for n in row + ([length - sum(row)] if sum(row) < length else [])]
    assert np.diff(cu).tolist() == expected and cu[0] == 0 and cu[-1] == documents.size


def test_padded_spans_are_each_rows_tokens_then_its_padding():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    spans = padded_spans(mask)
    assert spans.cu.tolist() == [0, 3, 4, 8, 8, 9, 12] and spans.longest == 4


# ---------------------------------------------------------------- the choice


def test_auto_runs_sdpa_on_a_cpu_and_says_why():
    path, why = choose_attention("auto", CPU, BertForMaskedLM, 0.0)
    assert path == "sdpa" and "varlen attention runs on CUDA only (this device: cpu)" in why


def test_auto_on_cuda_takes_torchs_varlen_without_dropout_and_flash_attn_where_installed(monkeypatch):
    monkeypatch.setattr(attention, "flash_installed", lambda: False)
    assert choose_attention("auto", CUDA, ModernBertForMaskedLM, 0.0)[0] == "varlen"
    path, why = choose_attention("auto", CUDA, BertForMaskedLM, 0.1)
    assert path == "sdpa" and "no attention dropout and this model trains with 0.1 (pass --dropout 0)" in why
    monkeypatch.setattr(attention, "flash_installed", lambda: True)
    assert choose_attention("auto", CUDA, ModernBertForMaskedLM, 0.0)[0] == "varlen", "torch's own first: no waits for padded batches"
    monkeypatch.setattr(attention, "varlen_available", lambda: False)
    assert choose_attention("auto", CUDA, ModernBertForMaskedLM, 0.0)[0] == "flash"
    assert choose_attention("flash", CUDA, BertForMaskedLM, 0.1)[0] == "flash", "flash-attn has attention dropout"
    path, why = choose_attention("auto", CUDA, ModernBertForMaskedLM, 0.0, deterministic=True)
    assert path == "sdpa" and "--deterministic keeps to SDPA" in why


@pytest.mark.parametrize(
    "path, device, message",
    [
        (
            "varlen",
            CPU,
            "--attention varlen: torch's varlen attention runs on CUDA only (this device: cpu); --attention auto would run sdpa",
        ),
        ("flex", CPU, "--attention flex: FlexAttention runs on CUDA only here"),
        ("flash", CPU, "--attention flash: flash-attn runs on CUDA only (this device: cpu); --attention auto would run sdpa"),
    ],
)
def test_a_path_that_cannot_run_here_is_one_line_naming_what_is_missing_and_what_would_run(path, device, message):
    with pytest.raises(UnmaskError, match=message.replace("(", r"\(").replace(")", r"\)")):
        choose_attention(path, device, BertForMaskedLM, 0.0)


def test_a_run_in_fp32_keeps_to_sdpa_because_the_unpadded_kernels_take_half_precision_only(monkeypatch):
    monkeypatch.setattr(attention, "flash_installed", lambda: True)
    path, why = choose_attention("auto", CUDA, ModernBertForMaskedLM, 0.0, half=False)
    assert path == "sdpa" and "takes bf16 or fp16 only and this run computes in fp32" in why
    for each in ("varlen", "flash"):
        with pytest.raises(
            UnmaskError, match=f"--attention {each}: its kernel takes bf16 or fp16 only .*; --attention auto would run sdpa"
        ):
            choose_attention(each, CUDA, ModernBertForMaskedLM, 0.0, half=False)


def test_flash_without_the_package_and_a_class_without_the_path_are_refused_by_name(monkeypatch):
    monkeypatch.setattr(attention, "flash_installed", lambda: False)
    with pytest.raises(UnmaskError, match="--attention flash: the flash-attn package is not installed; --attention auto would run varlen"):
        choose_attention("flash", CUDA, BertForMaskedLM, 0.0)
    with pytest.raises(UnmaskError, match="--attention flex: this model's class does not take it"):
        choose_attention("flex", CUDA, DebertaV2ForMaskedLM, 0.0)


def test_this_torch_has_the_varlen_attention_unmask_calls():
    assert torch.__version__ < "2.13" or attention.varlen_available(), "torch 2.13 ships varlen_attn with scale and window_size"
    assert attention.flex_available()


def test_a_torch_without_varlen_or_flex_is_named(monkeypatch):
    monkeypatch.setattr(attention, "varlen_available", lambda: False)
    monkeypatch.setattr(attention, "flex_available", lambda: False)
    monkeypatch.setattr(attention, "flash_installed", lambda: False)
    with pytest.raises(UnmaskError, match=r"--attention varlen: this torch \(.*\) has no torch.nn.attention.varlen"):
        choose_attention("varlen", CUDA, BertForMaskedLM, 0.0)
    with pytest.raises(UnmaskError, match=r"--attention flex: this torch \(.*\) has no FlexAttention"):
        choose_attention("flex", CUDA, BertForMaskedLM, 0.0)
    assert choose_attention("auto", CUDA, BertForMaskedLM, 0.0)[0] == "sdpa"


# ---------------------------------------------------------------- the same numbers


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), **_):
    """What torch's varlen kernel computes, by SDPA over each span alone: (tokens, heads, size)."""
    out = torch.zeros_like(q)
    left, right = window_size
    for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        if end == start:
            continue
        index = torch.arange(end - start)
        allowed = torch.ones(end - start, end - start, dtype=torch.bool)
        if left >= 0:
            allowed &= index[:, None] - index[None, :] <= left
        if right >= 0:
            allowed &= index[None, :] - index[:, None] <= right
        span = [x[start:end].transpose(0, 1) for x in (q, k, v)]
        out[start:end] = F.scaled_dot_product_attention(*span, attn_mask=allowed, scale=scale).transpose(0, 1)
    return out


def _twin_models(vocab: Vocabulary, arch: str, path: str) -> tuple[MaskedLM, MaskedLM]:
    """Two models with the same weights, no dropout: masked SDPA, and `path`. ModernBERT's
    sliding window is made shorter than the documents, so that it matters."""
    config = build_config(arch, "tiny", vocab, 64)
    if arch == "modernbert":
        config.local_attention = 8
    twins = []
    for _ in range(2):
        torch.manual_seed(0)
        twins.append(MaskedLM(AutoModelForMaskedLM.from_config(copy.deepcopy(config), attn_implementation="sdpa")))
        set_dropout(twins[-1].model, 0.0)
    reference, other = twins
    other.use_attention(path)
    return reference.eval(), other.eval()


def _packed_batch(vocab: Vocabulary) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two packed windows of 40 tokens: three documents, and two documents then padding."""
    generator = torch.Generator().manual_seed(3)

    def document(length: int) -> list[int]:
        return torch.randint(10, vocab.size, (length,), generator=generator).tolist() + [vocab.closer_id]

    first = [vocab.opener_id] + document(12) + document(17) + document(8)
    second = [vocab.opener_id] + document(20) + document(9)
    second += [vocab.pad_id] * (40 - len(second))
    ids = torch.tensor([first[:40], second])
    mask = (ids != vocab.pad_id).long()
    labels = torch.full_like(ids, IGNORE_INDEX)
    for row, column in [(0, 3), (0, 15), (0, 33), (1, 2), (1, 24), (1, 28)]:
        labels[row, column] = ids[row, column]
    return ids, mask, labels


def _loss_and_gradients(lm: MaskedLM, ids, mask, labels, documents) -> tuple[torch.Tensor, dict]:
    lm.zero_grad()
    loss, _ = lm.loss_sum(ids, mask, labels, None, documents)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in lm.named_parameters() if p.grad is not None}


def _varlen_twins_on_a_packed_batch(vocab: Vocabulary, arch: str, monkeypatch) -> tuple[MaskedLM, MaskedLM, tuple]:
    """Masked SDPA and varlen (the CPU reference standing in for torch's kernel) with the same
    weights, and a packed batch with its document ids."""
    monkeypatch.setattr(attention, "varlen_kernel", lambda: reference_varlen)
    reference, varlen = _twin_models(vocab, arch, "varlen")
    ids, mask, labels = _packed_batch(vocab)
    return reference, varlen, (ids, mask, labels, document_ids(ids, mask, vocab.closer_id))


@pytest.mark.parametrize("arch", ["bert", "roberta", "modernbert"])
def test_varlen_gives_masked_sdpas_loss_and_gradients_on_a_packed_batch_with_documents_apart(arch, vocab, monkeypatch):
    reference, varlen, (ids, mask, labels, documents) = _varlen_twins_on_a_packed_batch(vocab, arch, monkeypatch)
    expected_loss, expected = _loss_and_gradients(reference, ids, mask, labels, documents)
    loss, gradients = _loss_and_gradients(varlen, ids, mask, labels, documents)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
    assert gradients.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(gradients[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)
    # The spans the trainer makes on the host give the same as those made here from the device's ids.
    torch.testing.assert_close(varlen.loss_sum(ids, mask, labels, None, documents, spans_of(documents.numpy()))[0], expected_loss)
    crossing, _ = reference.loss_sum(ids, mask, labels)
    assert not torch.allclose(crossing, expected_loss, atol=1e-4), "attending across documents must differ, or the test shows nothing"


@pytest.mark.parametrize("arch", ["bert", "roberta", "modernbert"])
def test_varlen_under_bf16_autocast_stays_within_bf16s_tolerance_of_masked_sdpa(arch, vocab, monkeypatch):
    reference, varlen, (ids, mask, labels, documents) = _varlen_twins_on_a_packed_batch(vocab, arch, monkeypatch)
    exact = _loss_and_gradients(reference, ids, mask, labels, documents)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = _loss_and_gradients(reference, ids, mask, labels, documents)
        ours = _loss_and_gradients(varlen, ids, mask, labels, documents)

    def flat(result) -> torch.Tensor:
        return torch.cat([result[0].reshape(1)] + [result[1][name].float().reshape(-1) for name in sorted(exact[1])])

    # The tolerance bf16 earns is its own rounding: masked SDPA in bf16 against the same in fp32.
    # Here varlen is 0.3 to 0.6 of that from masked SDPA in bf16; spans that let documents attend
    # across each other put it 2.3 to 3.9 times that far off.
    rounding, error = float((flat(expected) - flat(exact)).norm()), float((flat(ours) - flat(expected)).norm())
    assert error <= 1.5 * rounding, (error, rounding)


@pytest.mark.parametrize("arch", ["bert", "roberta", "modernbert"])
def test_varlen_gives_masked_sdpas_hidden_states_and_gradients_on_a_padded_batch(arch, vocab, monkeypatch):
    monkeypatch.setattr(attention, "varlen_kernel", lambda: reference_varlen)
    reference, varlen = _twin_models(vocab, arch, "varlen")
    ids, mask, _ = _packed_batch(vocab)
    real = mask.bool()
    states = []
    for lm in (reference, varlen):
        lm.zero_grad()
        hidden = lm.hidden_states(ids, mask)
        (hidden[real] ** 2).sum().backward()
        states.append((hidden[real].detach(), {name: p.grad.clone() for name, p in lm.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(states[1][0], states[0][0], rtol=1e-5, atol=1e-5)
    for name, grad in states[0][1].items():
        torch.testing.assert_close(states[1][1][name], grad, rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize("arch", ["bert", "roberta", "modernbert"])
def test_flex_gives_masked_sdpas_logits_with_documents_apart_and_with_padding(arch, vocab, monkeypatch):
    # transformers compiles flex_attention; torch 2.13's CPU kernel for it does not compile
    # here (an inductor C++ error), so the eager FlexAttention stands in: the block masks and
    # their wiring are what is tested.
    from torch.nn.attention.flex_attention import flex_attention
    from transformers.integrations import flex_attention as integration

    monkeypatch.setattr(integration, "compile_friendly_flex_attention", lambda q, k, v, training=False, **kw: flex_attention(q, k, v, **kw))
    reference, flex = _twin_models(vocab, arch, "flex")
    ids, mask, labels = _packed_batch(vocab)
    documents = document_ids(ids, mask, vocab.closer_id)
    picked = labels != IGNORE_INDEX
    with torch.no_grad():
        torch.testing.assert_close(
            flex.masked_logits(ids, mask, picked, documents), reference.masked_logits(ids, mask, picked, documents), rtol=1e-4, atol=1e-4
        )
        real = mask.bool()
        torch.testing.assert_close(flex.hidden_states(ids, mask)[real], reference.hidden_states(ids, mask)[real], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_an_attention_path_this_machine_lacks_stops_the_command_before_it_writes_anything(
    command, store_dir, tiny_model_dir, tmp_path, capsys
):
    from conftest import classification_records, write_jsonl

    from unmask.cli.main import main

    out = tmp_path / "run"
    if command == "train":
        argv = ["train", "--data", str(store_dir), "--model", str(tiny_model_dir), "--out", str(out), "--max-steps", "2"]
    else:
        data = write_jsonl(tmp_path / "t.jsonl", classification_records(8))
        argv = ["finetune", str(tiny_model_dir), "--train", str(data), "--eval", str(data), "--out", str(out), "--device", "cpu"]
    code = main([*argv, "--attention", "varlen", "--progress", "none"])
    err = capsys.readouterr().err
    assert (
        code == 1
        and "--attention varlen: torch's varlen attention runs on CUDA only (this device: cpu); --attention auto would run sdpa" in err
    ), err
    assert not out.exists(), "nothing written before the setting is refused"


def test_fp32_evaluation_of_a_model_on_an_unpadded_path_runs_sdpa_for_its_duration(vocab, store_dir, monkeypatch):
    from unmask.evaluation.heldout import evaluate_model, held_out_windows

    def no_half_precision(*args, **kwargs):
        raise AssertionError("the varlen kernel was called in fp32")

    monkeypatch.setattr(attention, "varlen_kernel", lambda: no_half_precision)
    reference, varlen = _twin_models(vocab, "bert", "varlen")
    windows = held_out_windows([str(store_dir)], AutoTokenizer.from_pretrained(store_dir / "tokenizer"), seq_len=32)
    scored = [evaluate_model(lm, windows, batch_size=4, device=CPU, dtype=None, documents_apart=True)[0] for lm in (reference, varlen)]
    assert scored[1] == scored[0] and varlen.attention == "varlen" and varlen.model.config._attn_implementation == "unmask_varlen"


def test_bert_under_varlen_never_asks_the_device_whether_the_batch_is_packed(vocab, monkeypatch):
    import transformers.masking_utils as masking_utils

    def asks(*args, **kwargs):
        raise AssertionError("transformers' packed-sequence detection ran (a wait for the device)")

    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", asks)
    _, varlen, (ids, mask, labels, documents) = _varlen_twins_on_a_packed_batch(vocab, "bert", monkeypatch)
    loss, _ = varlen.loss_sum(ids, mask, labels, None, documents, spans_of(documents.numpy()))
    assert torch.isfinite(loss)


def test_dropout_zero_reaches_modernberts_attention_whose_dropout_is_a_number(vocab):
    config = build_config("modernbert", "tiny", vocab, 64)
    config.attention_dropout = 0.1
    model = AutoModelForMaskedLM.from_config(config)
    assert {m.attention_dropout for m in model.modules() if isinstance(getattr(m, "attention_dropout", None), float)} == {0.1}
    set_dropout(model, 0.0)
    assert {m.attention_dropout for m in model.modules() if isinstance(getattr(m, "attention_dropout", None), float)} == {0.0}
