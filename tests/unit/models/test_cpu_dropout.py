import pytest
import torch
from transformers import AutoModelForMaskedLM, BertConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from unmask.models import cpu_dropout
from unmask.models.cpu_dropout import CheapDropout, attention_forward, cheap_dropout, keep_mask


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.25])
def test_keep_mask_rate_is_exact_in_every_lane(keep):
    torch.manual_seed(0)
    mask = keep_mask((1000, 1000), keep)
    assert mask.dtype == torch.bool and mask.shape == (1000, 1000)
    assert abs(mask.float().mean().item() - keep) < 0.002
    # Each 64-bit draw feeds four consecutive elements: every one of the four lanes must be
    # uniform, which a draw over a narrower range than 64 bits would break in its top lane.
    lanes = mask.view(-1, 4).float().mean(dim=0)
    assert torch.all((lanes - keep).abs() < 0.004), lanes


def test_keep_mask_follows_the_torch_seed_and_odd_sizes():
    torch.manual_seed(3)
    first = keep_mask((7, 5), 0.5)
    torch.manual_seed(3)
    assert torch.equal(first, keep_mask((7, 5), 0.5))
    assert not torch.equal(first, keep_mask((7, 5), 0.5))


def test_cheap_dropout_zeroes_and_rescales_and_backpropagates_through_the_same_mask():
    x = torch.rand(200, 300) + 1.0
    x.requires_grad_()
    torch.manual_seed(1)
    y = cheap_dropout(x, 0.2)
    dropped = y == 0
    assert abs(dropped.float().mean().item() - 0.2) < 0.01
    torch.testing.assert_close(y[~dropped], x[~dropped] / 0.8)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (~dropped).float() / 0.8)
    assert torch.equal(cheap_dropout(x, 0.2, training=False), x)
    assert torch.equal(cheap_dropout(x, 0.0), x)


def test_attention_with_dropout_is_softmax_attention_with_the_drawn_mask():
    torch.manual_seed(0)
    query, key, value = (torch.randn(2, 3, 5, 4) for _ in range(3))
    padding = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    padding[1, ..., 3:] = False
    module = torch.nn.Module()
    module.is_causal = False
    torch.manual_seed(7)
    ours, _ = attention_forward(module, query, key, value, padding, dropout=0.25, scaling=0.5)
    torch.manual_seed(7)
    keep = keep_mask((2, 3, 5, 5), 0.75)
    scores = (query @ key.transpose(-1, -2) * 0.5).masked_fill(~padding, float("-inf"))
    reference = (torch.softmax(scores, dim=-1) * keep / 0.75) @ value
    torch.testing.assert_close(ours, reference.transpose(1, 2))
    plain, _ = sdpa_attention_forward(module, query, key, value, padding, dropout=0.0, scaling=0.5)
    without, _ = attention_forward(module, query, key, value, padding, dropout=0.0, scaling=0.5)
    assert torch.equal(without, plain)


def test_install_keeps_weights_and_eval_outputs_and_saves_a_plain_config(tmp_path):
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(
        BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
        attn_implementation="sdpa",
    ).eval()
    ids = torch.randint(5, 60, (2, 9))
    before = model(input_ids=ids).logits
    keys = set(model.state_dict())
    assert cpu_dropout.install(model, switch_attention=True)
    assert model.config._attn_implementation == cpu_dropout.ATTENTION_NAME
    assert all(type(m) is not torch.nn.Dropout for m in model.modules())
    assert any(isinstance(m, CheapDropout) for m in model.modules())
    assert set(model.state_dict()) == keys
    assert torch.equal(model(input_ids=ids).logits, before)
    model.save_pretrained(tmp_path)
    assert "unmask" not in (tmp_path / "config.json").read_text()


def test_attention_is_only_switched_where_the_architecture_table_allows():
    from transformers import ModernBertConfig

    from unmask.models.masked_lm import MaskedLM

    modern = MaskedLM(
        AutoModelForMaskedLM.from_config(
            ModernBertConfig(
                vocab_size=60,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                pad_token_id=0,
            ),
            attn_implementation="sdpa",
        )
    )
    assert modern.config._attn_implementation == "sdpa"
    bert = MaskedLM(
        AutoModelForMaskedLM.from_config(
            BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
            attn_implementation="sdpa",
        )
    )
    assert bert.config._attn_implementation == cpu_dropout.ATTENTION_NAME
