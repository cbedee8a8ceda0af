import pytest
import torch

from conftest import quiet
from unmask.config import UnmaskError
from unmask.infer import Filler, inspect_masking, normalise_masks, window_around_masks


@pytest.fixture(scope="module")
def filler(tiny_model_dir):
    return Filler(str(tiny_model_dir), device="cpu", echo=quiet)


def test_fill_returns_top_k_candidates_per_mask_matching_the_model(filler):
    [result] = filler.fill(["the cat [MASK] the [MASK] today."], top_k=3)
    assert len(result.masks) == 2
    tokenizer, model = filler.tokenizer, filler.lm.model
    encoded = tokenizer("the cat [MASK] the [MASK] today.", return_tensors="pt")
    with torch.no_grad():
        probabilities = model(**encoded).logits.softmax(-1)[0]
    for mask in result.masks:
        assert encoded["input_ids"][0, mask.position] == tokenizer.mask_token_id
        expected = probabilities[mask.position].topk(3)
        assert [c.token_id for c in mask.candidates] == expected.indices.tolist()
        assert [c.score for c in mask.candidates] == pytest.approx(expected.values.tolist(), rel=1e-4)
        assert mask.candidates[0].score >= mask.candidates[1].score >= mask.candidates[2].score


def test_mask_spellings_map_to_the_model_mask_token(filler):
    assert normalise_masks("a <mask> and a [MASK]", "[MASK]") == "a [MASK] and a [MASK]"
    assert normalise_masks("a [MASK]", "<mask>") == "a <mask>"
    with_angle, with_square = filler.fill(["the cat <mask> the door.", "the cat [MASK] the door."], top_k=2)
    assert [c.token_id for c in with_angle.masks[0].candidates] == [c.token_id for c in with_square.masks[0].candidates]


def test_text_without_a_mask_is_a_clear_error(filler):
    with pytest.raises(UnmaskError, match=r"notes\.txt:3: no mask"):
        filler.fill(["the cat sees the door."], labels=["notes.txt:3"])


def test_long_text_keeps_its_masks_inside_the_window():
    ids = [2] + [10] * 300 + [4] + [11] * 50 + [4] + [10] * 300 + [3]
    window = window_around_masks(ids, mask_id=4, max_len=128, label="text 1")
    assert len(window) == 128 and window[0] == 2 and window[-1] == 3
    assert window.count(4) == 2
    assert window_around_masks([2, 4, 3], 4, 128, "t") == [2, 4, 3]
    early = window_around_masks([2, 4] + [10] * 400 + [3], 4, 128, "t")
    assert early[1] == 4 and len(early) == 128
    with pytest.raises(UnmaskError, match="text 1: its masks lie 202 tokens apart"):
        window_around_masks([2] + [4] + [10] * 200 + [4] + [3], 4, 128, "text 1")


def test_fill_long_text_through_the_model(filler):
    text = "the cat sees the door today. " * 60 + "a dog [MASK] a book." + " the teacher reads a letter." * 60
    [result] = filler.fill([text], top_k=1)
    assert len(result.masks) == 1


def test_inspect_is_deterministic_by_seed_and_never_picks_specials(tokenizer_dir):
    text = "the cat sees the door today and a dog reads a book every morning in the park."
    first = inspect_masking(text, str(tokenizer_dir), seed=7, mask_prob=0.5)
    assert first == inspect_masking(text, str(tokenizer_dir), seed=7, mask_prob=0.5)
    assert first != inspect_masking(text, str(tokenizer_dir), seed=8, mask_prob=0.5)
    assert first[0].special and first[-1].special and not first[0].picked and not first[-1].picked
    for row in first:
        assert (row.label != -100) == row.picked
        if row.picked:
            assert row.label == row.token_id and row.became
        else:
            assert row.input_id == row.token_id and row.became == ""
        if row.became == "[MASK]":
            assert row.input_id != row.token_id
