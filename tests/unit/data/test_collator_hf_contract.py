"""Hugging Face's own tests of `DataCollatorForLanguageModeling` (whole-word masking included,
as its `whole_word_mask=True` option), adapted to `unmask.MaskingCollator`: the contract of
the drop-in.

Sources: huggingface/transformers tests/trainer/test_data_collator.py, both the older layout
(DataCollatorIntegrationTest, NumpyDataCollatorIntegrationTest, the *ImmutabilityTest
classes) and the newer one (TestDataCollatorForLanguageModeling,
TestDataCollatorForWholeWordMask, TestNextSentencePrediction, TestSentenceOrderPrediction),
plus the checks of `DataCollatorForLanguageModeling.__post_init__` and the options its
docstring promises. Each test says which HF test it adapts and what changed.

The one change that runs through the file: HF draws masks from torch's (or numpy's)
generator, so its tests either compare tensors made under `set_seed` or hope that a seeded
draw of five tokens masks at least one. unmask's masks are a hash of (seed, example, round,
position), so those checks become properties that hold for every draw: labels exactly on
the picked positions and the original ids there, no special or padding position picked,
rates within six binomial standard deviations (a deterministic hash cannot be unlucky on
one run and lucky on the next, so the bound must hold for any honest draw), same seed same
masks, another seed other masks.
"""

import copy
import math
from collections.abc import Mapping

import numpy as np
import pytest
import torch
from transformers import BertTokenizer, BertTokenizerFast

from unmask import MaskingCollator

SPECIALS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
"""HF's setUp vocabulary: five special tokens and nothing else (ids 0..4), so that in
`range(10)` ids 0..4 are special and 5..9 are ordinary (ids the vocabulary does not name)."""

WIDE_WORDS = 1000
"""Ordinary tokens of the wide vocabulary: enough positions and replacement targets for rates."""

SIGMAS = 6.0
"""Width of every statistical bound: a binomial draw lands outside six standard deviations
about once in 500 million, so a failure is a wrong rate, not bad luck."""

CONTAINERS = {
    "list": lambda ids: list(ids),
    "tuple": lambda ids: tuple(ids),
    "numpy": lambda ids: np.asarray(list(ids), dtype=np.int64),
    "tensor": lambda ids: torch.tensor(list(ids)),
}
FORMS = ["dict-list", "dict-tuple", "dict-numpy", "dict-tensor", "bare-list", "bare-tensor"]
"""The record shapes HF's tests feed its collator: dicts of lists, arrays and tensors, bare
lists and bare tensors; and dicts of tuples, which HF's immutability fixtures start from (HF
turns them into lists first: its tokenizer.pad cannot pad a tuple)."""


def record(form: str, ids, **extra):
    """A record of `form` ("dict-numpy", "bare-list", ...); the extra sequences in the same container as the ids."""
    kind, container = form.split("-")
    make = CONTAINERS[container]
    if kind == "bare":
        return make(ids)
    return {"input_ids": make(ids), **{key: make(value) if isinstance(value, (list, range)) else value for key, value in extra.items()}}


def write_vocab(folder, tokens: list[str]) -> str:
    path = folder / "vocab.txt"
    path.write_text("".join(token + "\n" for token in tokens), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory) -> str:
    return write_vocab(tmp_path_factory.mktemp("hf-vocab"), SPECIALS)


@pytest.fixture
def tokenizer(vocab_file):
    """HF's `BertTokenizer(self.vocab_file)`, new per test: some tests take its pad or mask token away."""
    return BertTokenizer(vocab_file)


@pytest.fixture(scope="module")
def wide_tokenizer(tmp_path_factory):
    """The five specials and WIDE_WORDS ordinary tokens: room for rates and random replacements."""
    return BertTokenizer(write_vocab(tmp_path_factory.mktemp("wide-vocab"), SPECIALS + [f"w{i}" for i in range(WIDE_WORDS)]))


@pytest.fixture(scope="module")
def piece_tokenizer(tmp_path_factory):
    """A WordPiece vocabulary in which every word `wordN` + `ing` is two tokens, `wordN` and `##ing`."""
    return BertTokenizerFast(write_vocab(tmp_path_factory.mktemp("piece-vocab"), SPECIALS + [f"word{i}" for i in range(500)] + ["##ing"]))


def added_token_tokenizer(vocab_file, count: int):
    """HF's whole-word fixture: the five specials plus `count` added tokens `token_i`, one word each."""
    tokenizer = BertTokenizerFast(vocab_file)
    tokenizer.add_tokens([f"token_{i}" for i in range(count)])
    return tokenizer


def added_token_records(tokenizer, count: int, rows: int) -> list:
    text = " ".join(f"token_{i}" for i in range(count))
    return [tokenizer(text, return_offsets_mapping=True) for _ in range(rows)]


def wide_rows(count: int, seed: int = 0, low: int = 400, high: int = 512) -> list[list[int]]:
    """[CLS] ordinary ids [SEP], of lengths between `low` and `high` (so that the batch pads)."""
    rng = np.random.default_rng(seed)
    return [
        [1, *rng.integers(len(SPECIALS), len(SPECIALS) + WIDE_WORDS, size=int(rng.integers(low, high)) - 2).tolist(), 2]
        for _ in range(count)
    ]


def to_torch(value) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))


def padded(rows: list, width: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows as the collator should see them (padded on the right, as BertTokenizer pads), and where the padding is."""
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    is_pad = torch.ones(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
        is_pad[i, : len(row)] = False
    return ids, is_pad


def check_masking(batch: dict, rows: list, tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What must hold for any mask: labels are the original ids on the picked positions (and
    -100 off them), every other position keeps its id, and no special or padding position is
    picked. Returns (picked, original ids, maskable)."""
    ids, labels = to_torch(batch["input_ids"]), to_torch(batch["labels"])
    assert ids.shape == labels.shape
    original, is_pad = padded(rows, ids.shape[1], tokenizer.pad_token_id)
    picked = labels != -100
    assert torch.equal(labels[picked], original[picked]), "a label is the id that was there"
    assert torch.equal(ids[~picked], original[~picked]), "a position that is not picked keeps its id"
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    assert not (picked & special).any(), "special tokens are never picked"
    assert not (picked & is_pad).any(), "padding is never picked"
    replaced = picked & (ids != original) & (ids != tokenizer.mask_token_id)
    assert ((ids[replaced] >= 0) & (ids[replaced] < len(tokenizer))).all(), "random replacements come from the vocabulary"
    return picked, original, ~special & ~is_pad


def bound(count: int, share: float) -> float:
    """SIGMAS standard deviations of the share of `count` binomial draws that land with probability `share`."""
    return SIGMAS * math.sqrt(share * (1 - share) / count)


def ids_of(item) -> list[int]:
    value = item["input_ids"] if isinstance(item, Mapping) else item
    return [int(i) for i in (value.tolist() if hasattr(value, "tolist") else value)]


def check_output_type(batch: dict, return_tensors: str) -> None:
    for key in ("input_ids", "labels"):
        if return_tensors == "pt":
            assert isinstance(batch[key], torch.Tensor) and batch[key].dtype == torch.long, key
        else:
            assert isinstance(batch[key], np.ndarray) and batch[key].dtype == np.int64, key


# HF: DataCollatorIntegrationTest._test_no_pad_and_pad / test_data_collator_for_language_modeling (mlm=False half),
# NumpyDataCollatorIntegrationTest's twin, and the newer test_clm_mode, test_clm_with_padding, test_clm_pad_to_multiple_of,
# test_with_raw_list_features and test_numpy_output. HF checks only shapes; the labels' content is HF's own rule
# (`labels = input_ids`, pad id -> -100), so it is checked too. A real token whose id is the pad id (id 3 in range(10))
# is left unasserted: HF sets it to -100 by its id, a collator that knows the padding may keep it; both are sound.
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("return_tensors", ["pt", "np"])
def test_causal_lm_labels_are_the_ids_with_the_padding_ignored_and_nothing_masked(tokenizer, form, return_tensors):
    for multiple, width_no_pad, width_pad in ((None, 10, 10), (8, 16, 16)):
        collator = MaskingCollator(tokenizer, mlm=False, pad_to_multiple_of=multiple, return_tensors=return_tensors)
        for rows, width in (([range(10), range(10)], width_no_pad), ([range(5), range(10)], width_pad)):
            batch = collator([record(form, r) for r in rows])
            assert tuple(batch["input_ids"].shape) == tuple(batch["labels"].shape) == (2, width)
            check_output_type(batch, return_tensors)
            original, is_pad = padded([list(r) for r in rows], width, tokenizer.pad_token_id)
            ids, labels = to_torch(batch["input_ids"]), to_torch(batch["labels"])
            assert torch.equal(ids, original), "mlm=False masks nothing"
            assert (labels[is_pad] == -100).all(), "padding is ignored by the loss"
            real = ~is_pad & (original != tokenizer.pad_token_id)
            assert torch.equal(labels[real], original[real]), "every real token is its own label"


# HF: _test_no_pad_and_pad / test_data_collator_for_language_modeling (mlm=True half, torch and numpy classes), and the
# newer test_mlm_mode, test_mlm_with_padding, test_mlm_pad_to_multiple_of, test_numpy_mlm. Kept: the shapes (2, 10) and
# (2, 16). Changed: HF asserts that some [MASK] appears and that labels are -100 wherever no [MASK] is, which held only for
# the draw `set_seed(42)` gave (five maskable ids a row; a picked token left as is or replaced at random breaks the second
# assertion). Here the properties that hold for every draw are checked instead (check_masking); that masking happens at
# all, and at the rate asked, is test_the_masking_rate_and_the_mask_random_keep_split_are_the_ones_asked.
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("return_tensors", ["pt", "np"])
def test_mlm_labels_sit_exactly_on_picked_positions_which_are_never_special_or_padding(tokenizer, form, return_tensors):
    for multiple, width in ((None, 10), (8, 16)):
        collator = MaskingCollator(tokenizer, pad_to_multiple_of=multiple, return_tensors=return_tensors)
        for rows in ([range(10), range(10)], [range(5), range(10)]):
            batch = collator([record(form, r) for r in rows])
            assert tuple(batch["input_ids"].shape) == tuple(batch["labels"].shape) == (2, width)
            check_output_type(batch, return_tensors)
            check_masking(batch, [list(r) for r in rows], tokenizer)


# HF: _test_no_pad_and_pad (`tokenizer._pad_token = None` then `assertRaises(ValueError)`) and the newer
# test_missing_pad_token_error. Kept: a batch that needs padding and a tokenizer without a pad token raise ValueError.
# Added: the same for mlm=True and for pad_to_multiple_of (equal lengths that still need padding), and what HF does with
# bare lists of equal length: it stacks them without padding, so no pad token is needed.
@pytest.mark.parametrize("mlm", [False, True])
def test_records_that_need_padding_without_a_pad_token_raise_value_error(tokenizer, mlm):
    tokenizer.pad_token = None
    with pytest.raises(ValueError):
        MaskingCollator(tokenizer, mlm=mlm)([{"input_ids": list(range(5))}, {"input_ids": list(range(10))}])
    with pytest.raises(ValueError):
        MaskingCollator(tokenizer, mlm=mlm, pad_to_multiple_of=8)([list(range(10)), list(range(10))])
    batch = MaskingCollator(tokenizer, mlm=mlm)([list(range(10)), list(range(10))])
    assert tuple(batch["input_ids"].shape) == (2, 10)


# HF: test_data_collator_for_language_modeling_with_seed (torch and numpy), the newer test_mlm_seed_reproducibility, and
# TestDataCollatorForWholeWordMask.test_seed_reproducibility (998 added tokens, return_tensors="np"). Kept as HF has
# them: two collators with seed 42 give equal ids and labels, seed 43 gives other ids. Added: the labels (which positions
# were picked) differ too, so that a seed that only moved the random replacements would fail.
@pytest.mark.parametrize("return_tensors", ["pt", "np"])
@pytest.mark.parametrize("whole_word_mask", [False, True], ids=["token", "whole-word"])
def test_two_collators_with_one_seed_mask_alike_and_another_seed_masks_otherwise(tokenizer, vocab_file, return_tensors, whole_word_mask):
    if whole_word_mask:
        tokenizer = added_token_tokenizer(vocab_file, 998)
        features = added_token_records(tokenizer, 998, rows=2)
    else:
        features = [{"input_ids": list(range(1000))}, {"input_ids": list(range(1000))}]

    def collate(seed):
        return MaskingCollator(tokenizer, seed=seed, whole_word_mask=whole_word_mask, return_tensors=return_tensors)(
            copy.deepcopy(features)
        )

    first, second, other = collate(42), collate(42), collate(43)
    assert tuple(first["input_ids"].shape) == tuple(first["labels"].shape) == (2, 1000)
    assert np.array_equal(np.asarray(first["input_ids"]), np.asarray(second["input_ids"]))
    assert np.array_equal(np.asarray(first["labels"]), np.asarray(second["labels"]))
    assert not np.array_equal(np.asarray(first["input_ids"]), np.asarray(other["input_ids"]))
    assert not np.array_equal(np.asarray(first["labels"]) != -100, np.asarray(other["labels"]) != -100), (
        "another seed picks other positions"
    )


# HF: nothing names it, but every HF test relies on it: HF's collator draws from a generator that moves on, so the same
# records collated again are masked anew (dynamic masking, RoBERTa's recipe). unmask's masks are a hash, so this has to be
# built in: without MaskRateCallback driving epochs, a second collation of the same records must pick other positions.
def test_the_same_records_collated_again_by_one_collator_are_masked_anew(tokenizer):
    features = [{"input_ids": list(range(1000))}, {"input_ids": list(range(1000))}]
    collator = MaskingCollator(tokenizer, seed=42)
    once, again = collator(copy.deepcopy(features)), collator(copy.deepcopy(features))
    assert not torch.equal(once["labels"] != -100, again["labels"] != -100)


# HF: the newer test_mlm_multiworker_dataloader (shape (5, 2, 1000) through a 2-worker DataLoader) and
# TestDataCollatorForWholeWordMask.test_seed_multiworker_dataloader (equal batches for seed 42, other batches for 43).
# Kept: the shape, equal batches for equal seeds, other batches for another collator seed. Changed: HF compares a loader
# seeded with `generator=manual_seed(42)` to one without a generator; that equality holds in HF because its workers reseed
# with `seed + worker id`, which repeats the same masks every epoch. unmask's worker masks follow the loader's worker
# seed so that each epoch masks anew, so both loaders here get the same generator seed. The records differ (HF's ten are
# identical), so that a collator masking every row alike would not pass.
@pytest.mark.parametrize("whole_word_mask", [False, True], ids=["token", "whole-word"])
def test_a_two_worker_loader_masks_reproducibly_for_one_seed_and_otherwise_for_another(tokenizer, vocab_file, whole_word_mask):
    if whole_word_mask:
        tokenizer = added_token_tokenizer(vocab_file, 998)
        features = added_token_records(tokenizer, 998, rows=10)
    else:
        features = [{"input_ids": list(range(i, i + 1000))} for i in range(10)]

    def run(seed):
        loader = torch.utils.data.DataLoader(
            features,
            batch_size=2,
            num_workers=2,
            generator=torch.Generator().manual_seed(42),
            collate_fn=MaskingCollator(tokenizer, seed=seed, whole_word_mask=whole_word_mask),
        )
        batches = list(loader)
        return torch.stack([b["input_ids"] for b in batches]), torch.stack([b["labels"] for b in batches])

    (ids_a, labels_a), (ids_b, labels_b), (ids_c, labels_c) = run(42), run(42), run(43)
    assert ids_a.shape == labels_a.shape == torch.Size([5, 2, 1000])
    assert torch.equal(ids_a, ids_b) and torch.equal(labels_a, labels_b)
    assert not torch.equal(ids_a, ids_c) and not torch.equal(labels_a != -100, labels_c != -100)


# HF: test_nsp and test_sop (torch and numpy classes; SOP features are torch tensors in the torch class, numpy arrays in
# the numpy one) and the newer TestNextSentencePrediction / TestSentenceOrderPrediction. Kept: the shapes (2, 5) and
# (2, 8) of input_ids, token_type_ids and labels, and (2,) of the sentence label. Added: the sentence labels keep their
# values, token_type_ids keep theirs and pad with the tokenizer's pad_token_type_id, and nothing is picked, since every id
# in [0, 5) is special in HF's vocabulary.
@pytest.mark.parametrize("sentence_key", ["next_sentence_label", "sentence_order_label"])
@pytest.mark.parametrize("container", ["list", "numpy", "tensor"])
@pytest.mark.parametrize("return_tensors", ["pt", "np"])
def test_sentence_pair_keys_are_padded_and_passed_through(tokenizer, sentence_key, container, return_tensors):
    features = [record(f"dict-{container}", range(5), token_type_ids=[0, 1, 2, 3, 4], **{sentence_key: i}) for i in range(2)]
    for multiple, width in ((None, 5), (8, 8)):
        batch = MaskingCollator(tokenizer, pad_to_multiple_of=multiple, return_tensors=return_tensors)(copy.deepcopy(features))
        for key in ("input_ids", "token_type_ids", "labels"):
            assert tuple(batch[key].shape) == (2, width), key
        assert tuple(batch[sentence_key].shape) == (2,) and to_torch(batch[sentence_key]).tolist() == [0, 1]
        token_types = to_torch(batch["token_type_ids"])
        assert token_types[:, :5].tolist() == [[0, 1, 2, 3, 4]] * 2
        assert (token_types[:, 5:] == tokenizer.pad_token_type_id).all()
        assert (to_torch(batch["labels"]) == -100).all(), "ids 0..4 are all special: nothing to pick"


# HF: DataCollatorImmutabilityTest (and its numpy twin): test_language_modelling_collator_immutability,
# test_next_sentence_prediction_collator_immutability, test_sentence_order_prediction_collator_immutability,
# test_whole_world_masking_collator_immutability, and the newer test_immutability methods. Kept: HF's four collators
# (mlm on and off, pad_to_multiple_of None and 8), its record types (tuples, lists, numpy arrays, torch tensors), both
# return types. Changed: masking at probability 1 with every pick turned to [MASK], so that a collator that masked the
# records' own arrays or tensors in place could not pass by luck; rows of two lengths, so that padding happens (HF's
# "pad" case has two rows of length 5). Added: bare lists and tensors, and a special_tokens_mask, which the collator
# must drop from the batch, not pop from the records (HF pops it from its padded copy).
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("return_tensors", ["pt", "np"])
def test_collating_never_changes_the_records(tokenizer, form, return_tensors):
    collators = [
        MaskingCollator(tokenizer, mlm=mlm, pad_to_multiple_of=multiple, return_tensors=return_tensors, **masking)
        for mlm, masking in ((False, {}), (True, {"mlm_probability": 1.0, "mask_replace_prob": 1.0, "random_replace_prob": 0.0}))
        for multiple in (None, 8)
    ]
    record_sets = [[record(form, range(10)), record(form, range(10))], [record(form, range(5)), record(form, range(10))]]
    if form.startswith("dict"):
        record_sets.append(
            [
                record(form, [1, 5, 6, 2], token_type_ids=[0, 0, 1, 1], special_tokens_mask=[1, 0, 0, 1], next_sentence_label=0),
                record(form, [1, 7, 2], token_type_ids=[0, 0, 0], special_tokens_mask=[1, 0, 1], next_sentence_label=1),
            ]
        )
    for collator in collators:
        for records in record_sets:
            before = copy.deepcopy(records)
            collator(records)
            for old, new in zip(before, records):
                assert type(old) is type(new)
                if isinstance(old, dict):
                    assert list(old) == list(new), "no key added or popped"
                    for key in old:
                        assert type(old[key]) is type(new[key]), key
                        plain = isinstance(old[key], (int, list, tuple))
                        assert (old[key] == new[key]) if plain else (old[key].tolist() == new[key].tolist()), key
                else:
                    assert (old.tolist() == new.tolist()) if isinstance(old, torch.Tensor) else (old == new)


# HF: the whole-word tests of the newer file (TestDataCollatorForWholeWordMask.test_basic, test_with_numpy_inputs,
# test_with_tensor_inputs, test_numpy_output) and the older test_data_collator_for_whole_word_mask, with HF's v5
# spelling `DataCollatorForLanguageModeling(..., whole_word_mask=True)` (the class DataCollatorForWholeWordMask is gone
# from the installed transformers). Kept: HF's records (8 added tokens, `return_offsets_mapping=True`, as lists, numpy
# arrays and tensors) and the shapes (2, 10). Added: the masking properties, and that offset_mapping is consumed as HF
# consumes it (popped: a model's forward takes no such argument).
@pytest.mark.parametrize("convert", [None, "np", "pt"])
@pytest.mark.parametrize("return_tensors", ["pt", "np"])
def test_whole_word_mask_takes_hf_offset_records_as_lists_arrays_and_tensors(vocab_file, convert, return_tensors):
    tokenizer = added_token_tokenizer(vocab_file, 8)
    features = added_token_records(tokenizer, 8, rows=2)
    if convert:
        features = [f.convert_to_tensors(convert) for f in features]
    batch = MaskingCollator(tokenizer, whole_word_mask=True, return_tensors=return_tensors)(features)
    assert tuple(batch["input_ids"].shape) == tuple(batch["labels"].shape) == (2, 10)
    check_output_type(batch, return_tensors)
    assert "offset_mapping" not in batch
    check_masking(batch, [ids_of(f) for f in features], tokenizer)


# HF: TestDataCollatorForLanguageModeling.test_calc_word_ids_and_prob_mask and test_whole_word_mask_internal, which test
# HF's private static methods on hand-made offsets. unmask has no such methods; the behaviour they pin down is tested
# through the public call instead: every piece of a word is picked with it or not at all, words are picked at the rate
# asked, specials and padding never. Words are found from the records' offset_mapping (HF's way) and, without it, from
# the vocabulary's `##` pieces; every word is two tokens, so the rate over words and over tokens is the same number.
@pytest.mark.parametrize("with_offsets", [True, False], ids=["offsets", "vocabulary"])
def test_whole_word_mask_picks_every_piece_of_a_word_or_none(piece_tokenizer, with_offsets):
    rng = np.random.default_rng(1)
    texts = [" ".join(f"word{i}ing" for i in rng.integers(0, 500, size=int(rng.integers(200, 250)))) for _ in range(16)]
    records = [dict(piece_tokenizer(text, return_offsets_mapping=with_offsets)) for text in texts]
    batch = MaskingCollator(piece_tokenizer, whole_word_mask=True, mlm_probability=0.15, seed=3)(records)
    picked, original, maskable = check_masking(batch, [r["input_ids"] for r in records], piece_tokenizer)
    piece_id = piece_tokenizer.convert_tokens_to_ids("##ing")
    pieces = original == piece_id
    assert pieces.sum() == maskable.sum() // 2, "every word is two tokens"
    word_start = torch.roll(pieces, -1, dims=1)
    assert torch.equal(picked[word_start], picked[pieces]), "a word's two pieces share one fate"
    words = int(word_start.sum())
    rate = float(picked[word_start].sum()) / words
    assert abs(rate - 0.15) < bound(words, 0.15), f"{rate:.4f} of {words} words picked"


# HF: DataCollatorForLanguageModeling.__post_init__, which every HF construction in the test file goes through: it
# refuses mlm_probability outside [0, 1], either replacement probability outside [0, 1], a sum of the two above 1 ("should
# not exceed 1"), and whole_word_mask without mlm. Each raises ValueError at construction here, as in HF. return_tensors is HF's DataCollatorMixin check, raised when called; it is
# accepted here at construction or at the call. Not carried: HF refuses mlm_probability=None, which in unmask means
# "take mask_prob".
@pytest.mark.parametrize(
    "settings",
    [
        {"mlm_probability": -0.1},
        {"mlm_probability": 1.5},
        {"mask_replace_prob": 0.9, "random_replace_prob": 0.2},
        {"mask_replace_prob": -0.1},
        {"random_replace_prob": -0.1},
        {"mask_replace_prob": 1.5, "random_replace_prob": 0.0},
        {"mask_replace_prob": 0.0, "random_replace_prob": 1.5},
        {"mlm": False, "whole_word_mask": True},
    ],
    ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()),
)
def test_settings_hf_refuses_raise_value_error_at_construction(tokenizer, settings):
    with pytest.raises(ValueError):
        MaskingCollator(tokenizer, **settings)


def test_a_tokenizer_without_mask_token_is_refused_for_mlm_and_fine_for_causal_lm(tokenizer):
    # HF's __post_init__: mlm=True needs a mask token ("You should pass `mlm=False`"); mlm=False does not.
    tokenizer.mask_token = None
    with pytest.raises(ValueError):
        MaskingCollator(tokenizer)
    assert tuple(MaskingCollator(tokenizer, mlm=False)([list(range(10))] * 2)["labels"].shape) == (2, 10)


def test_an_unknown_return_type_raises_value_error(tokenizer):
    # HF: DataCollatorMixin.__call__ raises ValueError("Framework 'tf' not recognized!"), per collator and per call.
    with pytest.raises(ValueError):
        MaskingCollator(tokenizer, return_tensors="tf")([list(range(10))] * 2)
    with pytest.raises(ValueError):
        MaskingCollator(tokenizer)([list(range(10))] * 2, return_tensors="tf")


# HF: __post_init__ accepts mlm_probability and both replacement probabilities anywhere in [0, 1] (with a sum of at most
# 1), and its docstring's "Example Options and Expectations" 2-4 say what the extremes do: all [MASK], all random, and
# (by the remainder rule) all left unchanged. At probability 1 every maskable position is picked and at 0 none, so these
# are exact checks; only the all-random case is a bound, since a random draw may land on the token it replaces (or on
# [MASK], where the draw is over the whole vocabulary, as HF's is).
@pytest.mark.parametrize("mlm_probability", [0.0, 1.0])
def test_probability_zero_picks_nothing_and_one_picks_every_maskable_position(wide_tokenizer, mlm_probability):
    rows = wide_rows(8)
    batch = MaskingCollator(wide_tokenizer, mlm_probability=mlm_probability)([{"input_ids": r} for r in rows])
    picked, original, maskable = check_masking(batch, rows, wide_tokenizer)
    assert torch.equal(picked, maskable if mlm_probability == 1.0 else torch.zeros_like(maskable))


@pytest.mark.parametrize("mask_replace_prob, random_replace_prob", [(1.0, 0.0), (0.0, 1.0), (0.0, 0.0), (0.9, 0.1)])
def test_the_replacement_extremes_hf_allows_do_what_its_docstring_says(wide_tokenizer, mask_replace_prob, random_replace_prob):
    rows = wide_rows(8)
    collator = MaskingCollator(
        wide_tokenizer, mlm_probability=1.0, mask_replace_prob=mask_replace_prob, random_replace_prob=random_replace_prob
    )
    batch = collator([{"input_ids": r} for r in rows])
    picked, original, maskable = check_masking(batch, rows, wide_tokenizer)
    assert torch.equal(picked, maskable)
    ids, mask_id = to_torch(batch["input_ids"])[picked], wide_tokenizer.mask_token_id
    became_mask, kept = ids == mask_id, ids == original[picked]
    if mask_replace_prob == 1.0:
        assert became_mask.all()
    elif (mask_replace_prob, random_replace_prob) == (0.0, 0.0):
        assert kept.all() and not became_mask.any()
    else:
        # a random draw equals the token it replaces, or [MASK], with probability at most 2 in the vocabulary's size
        chance, count = 2 / len(wide_tokenizer), int(picked.sum())
        unchanged_or_mask = float((kept | (became_mask & (mask_replace_prob == 0.0))).sum()) / count
        assert unchanged_or_mask < (1 - mask_replace_prob - random_replace_prob) + chance + bound(count, chance), unchanged_or_mask


# HF: the statistics HF's exact-tensor tests stood for, and the docstring's "Default Behavior" (80% [MASK], 10% random,
# 10% unchanged) and "Balanced replacement" (50/40/10). The rate is over the maskable positions (HF's probability
# matrix is mlm_probability there and 0 elsewhere); each share is over the picked positions. Bounds: SIGMAS binomial
# standard deviations, plus the share of random draws that land on the token itself or on [MASK] (at most 2 in the
# vocabulary's 1005), which HF's own draw over the whole vocabulary also has.
@pytest.mark.parametrize("mlm_probability, mask_replace_prob, random_replace_prob", [(None, 0.8, 0.1), (0.3, 0.5, 0.4)])
def test_the_masking_rate_and_the_mask_random_keep_split_are_the_ones_asked(
    wide_tokenizer, mlm_probability, mask_replace_prob, random_replace_prob
):
    rows = wide_rows(64, seed=7)
    settings = {"mask_replace_prob": mask_replace_prob, "random_replace_prob": random_replace_prob}
    if mlm_probability is not None:
        settings["mlm_probability"] = mlm_probability
    batch = MaskingCollator(wide_tokenizer, seed=11, **settings)([{"input_ids": r} for r in rows])
    picked, original, maskable = check_masking(batch, rows, wide_tokenizer)
    rate_asked = 0.15 if mlm_probability is None else mlm_probability  # HF's default, and unmask's mask_prob default
    n, k = int(maskable.sum()), int(picked.sum())
    assert abs(k / n - rate_asked) < bound(n, rate_asked), f"rate {k / n:.4f} over {n} maskable positions"
    ids = to_torch(batch["input_ids"])[picked]
    became_mask = float((ids == wide_tokenizer.mask_token_id).sum()) / k
    kept = float((ids == original[picked]).sum()) / k
    stray = random_replace_prob * 2 / len(wide_tokenizer)
    keep_asked = 1 - mask_replace_prob - random_replace_prob
    assert abs(became_mask - mask_replace_prob) < bound(k, mask_replace_prob) + stray, f"[MASK] share {became_mask:.4f} of {k}"
    assert abs(kept - keep_asked) < bound(k, keep_asked) + stray, f"unchanged share {kept:.4f} of {k}"
    random = 1 - became_mask - kept
    assert abs(random - random_replace_prob) < bound(k, random_replace_prob) + stray, f"random share {random:.4f} of {k}"


# HF: the docstring's Tip ("a dataset having items ... with the "special_tokens_mask" key, as returned by a tokenizer with
# return_special_tokens_mask=True") and torch_call's `batch.pop("special_tokens_mask")`: a mask in the records decides
# which positions are special, and is not returned. At probability 1 every position it does not flag is picked, so a
# collator that ignored it (or only half honoured it) fails exactly.
def test_a_special_tokens_mask_in_the_records_is_honoured_and_not_returned(wide_tokenizer):
    rows = wide_rows(6, seed=3, low=40, high=64)
    flags = [[1 if i in (0, len(r) - 1) or i % 3 == 0 else 0 for i in range(len(r))] for r in rows]
    records = [{"input_ids": r, "special_tokens_mask": f} for r, f in zip(rows, flags)]
    for return_tensors in ("pt", "np"):
        batch = MaskingCollator(wide_tokenizer, mlm_probability=1.0, return_tensors=return_tensors)(records)
        assert "special_tokens_mask" not in batch
        picked, _, maskable = check_masking(batch, rows, wide_tokenizer)
        flagged = padded(flags, picked.shape[1], 1)[0].bool()
        assert torch.equal(picked, maskable & ~flagged)
    assert all("special_tokens_mask" in r for r in records), "popped from the batch, not from the records"


# HF: every test of the file uses a vocabulary in which all five ids are special; HF's random replacement then draws
# from those five. A collator that draws replacements from the ordinary tokens has none to draw from: it must still
# collate (masking, labels, shapes) rather than crash, even where every pick is to be replaced at random.
@pytest.mark.parametrize("mask_replace_prob, random_replace_prob", [(0.8, 0.1), (0.0, 1.0)])
def test_a_vocabulary_of_only_special_tokens_does_not_crash_random_replacement(tokenizer, mask_replace_prob, random_replace_prob):
    rows = [list(range(1000)), list(range(500))]
    collator = MaskingCollator(tokenizer, mlm_probability=1.0, mask_replace_prob=mask_replace_prob, random_replace_prob=random_replace_prob)
    batch = collator([{"input_ids": r} for r in rows])
    picked, _, maskable = check_masking(batch, rows, tokenizer)
    assert torch.equal(picked, maskable)


# HF's names as aliases of unmask's (the brief of the drop-in): mlm_probability is mask_prob, whole_word_mask=True is
# strategy="whole-word". Two fresh collators that differ only in the spelling must give the same batch.
def test_hf_spellings_give_the_same_masks_as_unmasks_own(piece_tokenizer):
    records = [dict(piece_tokenizer(" ".join(f"word{i}ing" for i in range(j, j + 60)))) for j in range(8)]

    def labels(**settings):
        return MaskingCollator(piece_tokenizer, seed=5, **settings)(copy.deepcopy(records))["labels"]

    assert torch.equal(labels(mlm_probability=0.3), labels(mask_prob=0.3))
    assert not torch.equal(labels(mlm_probability=0.3), labels(mlm_probability=0.15)), "the alias is not ignored"
    assert torch.equal(labels(whole_word_mask=True), labels(strategy="whole-word"))


# HF: NumpyDataCollatorIntegrationTest calls `data_collator(pad_features, return_tensors="np")`: DataCollatorMixin lets a
# call override the collator's return type. Kept: both directions. Added: the masks do not depend on the return type
# (they are a hash, not torch's or numpy's generator), so fresh collators that differ only in it give equal batches.
def test_return_tensors_is_chosen_per_collator_or_per_call_and_leaves_the_masks_alone(tokenizer):
    features = [{"input_ids": list(range(300))}, {"input_ids": list(range(200))}]
    as_pt = MaskingCollator(tokenizer, seed=9)(copy.deepcopy(features))
    as_np = MaskingCollator(tokenizer, seed=9, return_tensors="np")(copy.deepcopy(features))
    check_output_type(as_pt, "pt")
    check_output_type(as_np, "np")
    assert np.array_equal(as_pt["labels"].numpy(), as_np["labels"]) and np.array_equal(as_pt["input_ids"].numpy(), as_np["input_ids"])
    check_output_type(MaskingCollator(tokenizer)(copy.deepcopy(features), return_tensors="np"), "np")
    check_output_type(MaskingCollator(tokenizer, return_tensors="np")(copy.deepcopy(features), return_tensors="pt"), "pt")
