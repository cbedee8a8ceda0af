"""unmask's masking inside Hugging Face's Trainer: the collator's contract against
DataCollatorForLanguageModeling's, its statistics, masks that do not depend on the loader,
whole words, the callback, bad input, and a real Trainer run with 0 and 2 workers."""

import math

import numpy as np
import pytest
import torch
from conftest import make_sentences, tiny_bert
from transformers import AutoTokenizer, DataCollatorForLanguageModeling

import unmask
from unmask.data.collator import MaskingCollator, example_key
from unmask.errors import UnmaskError


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def records(tokenizer, count: int, seed: int = 0) -> list[dict]:
    return [dict(tokenizer(text, truncation=True, max_length=32)) for text in make_sentences(count, seed)]


def test_the_output_has_the_keys_of_hf_collator_and_labels_only_on_picked_positions(tokenizer):
    batch = records(tokenizer, 8)
    ours = MaskingCollator(tokenizer, seed=1)(batch)
    theirs = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)(batch)
    assert set(ours) == set(theirs) and all(ours[k].shape == theirs[k].shape for k in ours)
    assert ours["input_ids"].dtype == theirs["input_ids"].dtype == torch.long
    original = tokenizer.pad(batch, return_tensors="pt")["input_ids"]
    picked = ours["labels"] != -100
    assert torch.equal(ours["labels"][picked], original[picked]) and torch.equal(ours["input_ids"][~picked], original[~picked])
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    assert not (picked & special).any() and not (picked & (ours["attention_mask"] == 0)).any(), "specials and padding are never picked"


def test_an_examples_masks_do_not_depend_on_its_batch_and_change_with_the_epoch(tokenizer):
    data = records(tokenizer, 12)
    collator = MaskingCollator(tokenizer, seed=3)
    collator.epoch = 0  # as MaskRateCallback sets it when training begins
    alone = collator([data[5]])
    among = collator([data[0], data[5], data[9]])
    width = alone["input_ids"].shape[1]
    assert torch.equal(alone["labels"][0], among["labels"][1, :width]), "the same masks in any batch, in any worker"
    collator.epoch = 1
    assert not torch.equal(collator([data[5]])["labels"][0], alone["labels"][0]), "masked anew next epoch"
    assert example_key({"input_ids": [1, 2], "idx": 7}, "idx") == 7 and example_key({"input_ids": [1, 2]}, "idx") == example_key(
        {"input_ids": [1, 2], "text": "x"}, "idx"
    )


def test_without_the_callback_every_collation_masks_anew_and_repeats_run_to_run(tokenizer):
    data = records(tokenizer, 12)
    first, second = MaskingCollator(tokenizer, seed=3), MaskingCollator(tokenizer, seed=3)
    once, again = first(data), first(data)
    assert not torch.equal(once["labels"], again["labels"]), "dynamic masking: new masks when an example comes again"
    assert torch.equal(second(data)["labels"], once["labels"]) and torch.equal(second(data)["labels"], again["labels"]), "reproducible"
    twins = first([data[0], data[0]])["labels"]
    assert not torch.equal(twins[0], twins[1]), "two identical records get masks of their own"
    assert not torch.equal(MaskingCollator(tokenizer, seed=4)(data)["labels"], once["labels"])


def test_the_statistics_match_hf_collator_within_a_few_standard_errors(tokenizer):
    data = records(tokenizer, 400)
    original = tokenizer.pad(data, return_tensors="pt")["input_ids"]
    torch.manual_seed(0)
    outputs = {
        "unmask": MaskingCollator(tokenizer, seed=0)(data),
        "hf": DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)(data),
    }
    maskable = (~torch.isin(original, torch.tensor(tokenizer.all_special_ids))) & (original != tokenizer.pad_token_id)
    n = int(maskable.sum())
    for name, out in outputs.items():
        picked = out["labels"] != -100
        rate = float(picked.sum()) / n
        assert abs(rate - 0.15) < 4 * math.sqrt(0.15 * 0.85 / n), f"{name}: rate {rate:.4f} over {n} tokens"
        k = int(picked.sum())
        became_mask = float((out["input_ids"][picked] == tokenizer.mask_token_id).sum()) / k
        kept = float((out["input_ids"][picked] == original[picked]).sum()) / k
        assert abs(became_mask - 0.8) < 4 * math.sqrt(0.8 * 0.2 / k), f"{name}: [MASK] share {became_mask:.3f}"
        # kept: the 10% left alone, plus random replacements that drew the same token
        assert abs(kept - 0.1) < 4 * math.sqrt(0.1 * 0.9 / k) + 0.01, f"{name}: kept share {kept:.3f}"


def test_whole_word_masking_keeps_the_pieces_of_a_word_together(tokenizer):
    data = records(tokenizer, 200)
    collator = MaskingCollator(tokenizer, strategy="whole-word", seed=2)
    out = collator(data)
    original = tokenizer.pad(data, return_tensors="pt")["input_ids"]
    picked = out["labels"] != -100
    pieces = torch.tensor([tokenizer.convert_ids_to_tokens(int(i)).startswith("##") for i in original.flatten()]).view_as(original)
    assert pieces.any(), "the test tokenizer splits some words"
    for row in range(original.shape[0]):
        for position in range(1, original.shape[1]):
            if pieces[row, position]:
                assert picked[row, position] == picked[row, position - 1], "a piece shares its word's fate"
    paired = [{**r, "word_ids": [i // 2 for i in range(len(r["input_ids"]))]} for r in data]  # a word_ids column wins
    picked = MaskingCollator(tokenizer, strategy="whole-word", seed=2)(paired)["labels"] != -100
    specials = torch.isin(original, torch.tensor(tokenizer.all_special_ids)) | (original == tokenizer.pad_token_id)
    for row, record in enumerate(paired):
        for position in range(1, len(record["input_ids"])):
            same_word = record["word_ids"][position] == record["word_ids"][position - 1]
            if same_word and not specials[row, position] and not specials[row, position - 1]:
                assert picked[row, position] == picked[row, position - 1], "the word_ids given decide the words"
    assert picked.any()


def test_numpy_records_and_left_padding_work_as_with_hf_collator(tokenizer):
    import numpy as np

    data = records(tokenizer, 6)
    as_arrays = [{k: np.asarray(v) for k, v in r.items()} for r in data]
    assert torch.equal(MaskingCollator(tokenizer, seed=1)(as_arrays)["labels"], MaskingCollator(tokenizer, seed=1)(data)["labels"])
    left = AutoTokenizer.from_pretrained(tokenizer.name_or_path, padding_side="left")
    with_words = [{**r, "word_ids": [None, *range(len(r["input_ids"]) - 2), None]} for r in data]
    out = MaskingCollator(left, strategy="whole-word", seed=1)(with_words)
    assert (out["attention_mask"][:, 0] == 0).any(), "padded on the left"
    assert not ((out["labels"] != -100) & (out["attention_mask"] == 0)).any()


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda t: MaskingCollator(t, mask_prob=1.5), r"MaskingCollator: mask_prob: must be between 0 and 1, got 1.5"),
        (lambda t: MaskingCollator(t, strategy="words"), r"strategy: 'words' is not one of token, whole-word, span"),
        (lambda t: MaskingCollator(t)([{"text": "no ids"}]), r"record 0 has no 'input_ids' \(keys: text\); tokenize the text first"),
        (lambda t: unmask.MaskRateCallback(DataCollatorForLanguageModeling(t)), r"needs the MaskingCollator the Trainer uses"),
        (lambda t: unmask.MaskRateCallback(MaskingCollator(t), schedule="linear"), r"schedule 'linear' needs the rate to end at"),
    ],
    ids=["probability", "strategy", "no-input-ids", "not-ours", "no-end"],
)
def test_bad_input_is_one_clear_line_before_the_first_batch(tokenizer, build, message):
    with pytest.raises(UnmaskError, match=message):
        build(tokenizer)


def test_whole_words_need_a_fast_tokenizer(tokenizer):
    class Slow:
        is_fast = False
        mask_token_id = tokenizer.mask_token_id

    with pytest.raises(UnmaskError, match=r"strategy 'whole-word': needs a fast tokenizer"):
        MaskingCollator(Slow(), strategy="whole-word")


def trainer_run(tokenizer, out, workers: int, steps: int = 30, every: str = "epoch", end: float | None = None):
    from transformers import Trainer, TrainingArguments

    data = records(tokenizer, 64, seed=4)
    collator = MaskingCollator(tokenizer, seed=5)
    callback = unmask.MaskRateCallback(collator, end=end, schedule="linear" if end else "constant", every=every)
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=2e-3,
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_num_workers=workers,
        disable_tqdm=True,
    )
    trainer = Trainer(model=tiny_bert(len(tokenizer)), args=args, train_dataset=data, data_collator=collator, callbacks=[callback])
    trainer.train()
    return [r for r in trainer.state.log_history if "loss" in r]


@pytest.mark.slow
def test_inside_a_real_trainer_the_loss_falls_the_rate_is_the_one_asked_and_workers_change_nothing(tokenizer, tmp_path):
    pytest.importorskip("accelerate")
    alone = trainer_run(tokenizer, tmp_path / "w0", workers=0)
    assert alone[-1]["loss"] < alone[0]["loss"], [r["loss"] for r in alone]
    data = records(tokenizer, 64, seed=4)
    per_record = sum(len(r["input_ids"]) - 2 for r in data) / len(data)  # maskable: all but [CLS] and [SEP]
    for line in alone:
        drawn = line["step"] * 8 * per_record  # the rate is counted over every batch so far
        tolerance = 4 * math.sqrt(0.15 * 0.85 / drawn) + 4 * math.sqrt(
            0.15 * 0.85 / (64 * per_record)
        )  # draw noise, and the 64 examples' own
        assert line["mask_prob"] == 0.15 and abs(line["mask_rate"] - 0.15) < tolerance, line
    with_workers = trainer_run(tokenizer, tmp_path / "w2", workers=2)
    assert [r["loss"] for r in with_workers] == [r["loss"] for r in alone], "2 workers draw the masks 0 workers draw"
    assert [r["mask_rate"] for r in with_workers] == pytest.approx([r["mask_rate"] for r in alone], abs=0.02)


def test_the_callback_moves_the_rate_per_step_in_the_main_process_and_refuses_it_with_workers(tokenizer, tmp_path):
    pytest.importorskip("accelerate")
    lines = trainer_run(tokenizer, tmp_path / "moving", workers=0, steps=20, every="step", end=0.05)
    assert lines[0]["mask_prob"] > lines[-1]["mask_prob"] and lines[-1]["mask_prob"] == pytest.approx(0.15 - 0.10 * 19 / 20, abs=1e-9)
    with pytest.raises(UnmaskError, match=r"every='step' moves the rate in this process, but 2 data-loader workers"):
        trainer_run(tokenizer, tmp_path / "refused", workers=2, steps=4, every="step", end=0.05)


def test_odd_pass_through_keys_are_kept_as_given_and_a_tokenizer_without_padding_masks_every_id(tokenizer):
    data = records(tokenizer, 3)
    ragged = [{**r, "spans": [[0, 1], [2]][: 1 + n % 2], "shape": np.zeros((n + 1, 2))} for n, r in enumerate(data)]
    batch = MaskingCollator(tokenizer, seed=1)(ragged)
    assert batch["spans"] == [r["spans"] for r in ragged] and len(batch["shape"]) == 3, "kept as lists, not a crash"

    class NoPad:  # a tokenizer whose id 0 is a real token and that has no pad token
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            if name == "all_special_ids":  # id 0 ([PAD] in the test vocabulary) is then an ordinary token
                return [i for i in self.inner.all_special_ids if i != 0]
            return None if name in ("pad_token_id", "pad_token") else getattr(self.inner, name)

        def __len__(self):
            return len(self.inner)

    same_length = [{"input_ids": [tokenizer.cls_token_id, 0, 0, 0, 0, tokenizer.sep_token_id]}] * 4
    picked = MaskingCollator(NoPad(tokenizer), mlm_probability=1.0, seed=0)(same_length)["labels"] != -100
    assert picked[:, 1:5].all(), "id 0 is not padding where the tokenizer has none"
