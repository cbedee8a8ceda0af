"""Several stores in one run: weights and their schedule, a sampler whose proportions match
them at any world size and across a resume, per-source evaluation, and a weighted tokenizer."""

import json

import numpy as np
import pytest
from conftest import make_documents, quiet

from unmask.config import PrepareConfig, TokenizerConfig, TrainConfig
from unmask.data.mixture import MixSchedule, MixtureSampler, WindowMix, slot_uniforms, sources_of, temperature_weights
from unmask.data.prepare import prepare
from unmask.data.windows import DataPosition
from unmask.errors import UnmaskError
from unmask.pretrain.train import train


class FakeWindows:
    def __init__(self, count: int):
        self.count = count

    def __len__(self) -> int:
        return self.count


def mix_of(*counts: int) -> WindowMix:
    mix = WindowMix.__new__(WindowMix)
    mix.names, mix.parts = [f"s{i}" for i in range(len(counts))], [FakeWindows(c) for c in counts]
    mix.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return mix


def test_the_realized_proportions_follow_the_weights_and_their_schedule():
    weights = np.asarray([0.6, 0.3, 0.1])
    sampler = MixtureSampler(mix_of(500, 300, 50), seed=3, schedule=MixSchedule(weights))
    drawn = np.concatenate([sampler.take(64, step, 0.0)[0] for step in range(400)])
    shares = np.bincount(np.searchsorted(sampler.mix.offsets, drawn, side="right") - 1, minlength=3) / len(drawn)
    assert np.allclose(shares, weights, atol=0.01), shares
    annealed = MixSchedule(np.asarray([0.8, 0.2]), np.asarray([0.2, 0.8]), "linear")
    early = sources_of(annealed.at(0.0), slot_uniforms(0, 1, 20000)).mean()
    late = sources_of(annealed.at(1.0), slot_uniforms(0, 2, 20000)).mean()
    middle = sources_of(annealed.at(0.5), slot_uniforms(0, 3, 20000)).mean()
    assert abs(early - 0.2) < 0.01 and abs(late - 0.8) < 0.01 and abs(middle - 0.5) < 0.01
    step = MixSchedule(np.asarray([1.0, 0.0]), np.asarray([0.0, 1.0]), "step", switch=0.25)
    assert list(step.at(0.2)) == [1.0, 0.0] and list(step.at(0.3)) == [0.0, 1.0]


def test_the_sampler_is_the_same_at_any_world_size_and_after_a_resume():
    schedule = MixSchedule(np.asarray([0.5, 0.5]))
    straight = MixtureSampler(mix_of(40, 7), seed=1, schedule=schedule)
    batches = [straight.take(16, step, 0.0) for step in range(30)]
    # Every process computes the whole global batch and keeps its share: two halves are the whole.
    again = MixtureSampler(mix_of(40, 7), seed=1, schedule=schedule)
    for step in range(30):
        indices, epochs = again.take(16, step, 0.0)
        halves = np.concatenate([indices[:8], indices[8:]])
        assert np.array_equal(halves, batches[step][0]) and np.array_equal(epochs, batches[step][1])
    first = MixtureSampler(mix_of(40, 7), seed=1, schedule=schedule)
    for step in range(12):
        first.take(16, step, 0.0)
    saved = [DataPosition(p.epoch, p.position) for p in first.positions]
    resumed = MixtureSampler(mix_of(40, 7), seed=1, schedule=schedule, positions=saved)
    for step in range(12, 30):
        assert np.array_equal(resumed.take(16, step, 0.0)[0], batches[step][0])
    assert straight.positions[1].epoch > 10 and straight.expected_epochs(30, 16)[1] == pytest.approx(30 * 16 * 0.5 / 7)


def test_temperature_evens_the_sources_out():
    assert np.allclose(temperature_weights([900, 100], 1.0), [0.9, 0.1])
    assert np.allclose(temperature_weights([900, 100], 1e9), [0.5, 0.5], atol=1e-6)
    flattened = temperature_weights([900, 100], 3.0)
    assert 0.1 < flattened[1] < 0.5


@pytest.fixture(scope="module")
def second_store(tmp_path_factory, tokenizer_dir):
    folder = tmp_path_factory.mktemp("second")
    for i, text in enumerate(make_documents(20, seed=7)):
        (folder / f"d{i}.txt").write_text(text)
    out = tmp_path_factory.mktemp("stores2") / "b"
    prepare(PrepareConfig(sources=[str(folder)], out=str(out), tokenizer=str(tokenizer_dir), val_fraction=0.1), progress=False)
    return out


def test_two_stores_train_together_and_each_held_out_split_is_scored_as_eval_scores_it(
    store_dir, second_store, tiny_model_dir, tmp_path, capsys
):
    from unmask.cli.main import main

    out = tmp_path / "run"
    config = TrainConfig(
        data=[f"a={store_dir}", f"b={second_store}"],
        mix="a=0.7,b=0.3",
        model=str(tiny_model_dir),
        out=str(out),
        seq_len=32,
        batch_size=8,
        max_steps=4,
        eval_every=0,
        checkpoint_every=2,
        dropout=0.0,
    )
    summary = train(config, progress=False, echo=quiet)
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "eval_loss" in line][-1]
    assert {"eval_loss@a", "eval_loss@b", "eval_accuracy@a", "eval_accuracy@b"} <= set(last)
    assert last["eval_masked_tokens"] == last["eval_masked_tokens@a"] + last["eval_masked_tokens@b"]
    assert summary["eval_loss"] == pytest.approx(
        (last["eval_loss@a"] * last["eval_masked_tokens@a"] + last["eval_loss@b"] * last["eval_masked_tokens@b"])
        / last["eval_masked_tokens"]
    )
    for name, store in (("a", store_dir), ("b", second_store)):
        assert main(["eval", str(out), "--data", str(store), "--seq-len", "32", "--batch-size", "8", "--json"]) == 0
        alone = json.loads(capsys.readouterr().out)
        assert alone["loss"] == pytest.approx(last[f"eval_loss@{name}"], rel=1e-9) and alone["accuracy"] == last[f"eval_accuracy@{name}"]
    assert main(["eval", str(out), "--data", f"a={store_dir}", f"b={second_store}", "--seq-len", "32", "--batch-size", "8", "--json"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert both["loss"] == pytest.approx(summary["eval_loss"], rel=1e-9) and set(both["sources"]) == {"a", "b"}
    state = json.loads((out / "checkpoints" / "step-00000004" / "state.json").read_text())
    assert len(state["data"]["sources"]) == 2, "each store's position is saved"


def test_a_resumed_mixture_run_ends_with_the_same_weights(store_dir, second_store, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    settings = dict(
        data=[f"a={store_dir}", f"b={second_store}"],
        mix="a=0.5,b=0.5",
        model=str(tiny_model_dir),
        seq_len=32,
        batch_size=8,
        max_steps=6,
        eval_every=0,
        checkpoint_every=2,
        dropout=0.0,
        keep_checkpoints=5,
    )
    train(TrainConfig(out=str(tmp_path / "straight"), **settings), progress=False, echo=quiet)

    def stop_at_3(step: int) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out=str(tmp_path / "killed"), **settings), progress=False, echo=quiet, on_step=stop_at_3)
    train(TrainConfig(out=str(tmp_path / "killed"), resume=True, **settings), progress=False, echo=quiet)
    a, b = (load_file(str(tmp_path / name / "model" / "model.safetensors")) for name in ("straight", "killed"))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_stores_of_other_tokenizers_and_bad_weights_are_refused(store_dir, roberta_dir, tmp_path, tiny_model_dir):
    other = tmp_path / "r"
    prepare(PrepareConfig(sources=["sample:pydocs"], out=str(other), tokenizer=str(roberta_dir), max_docs=3), progress=False)
    with pytest.raises(UnmaskError, match=r"--data: .* made with tokenizer .* the stores of one run must share a tokenizer"):
        train(
            TrainConfig(data=[f"a={store_dir}", f"b={other}"], model=str(tiny_model_dir), out=str(tmp_path / "run"), max_steps=1),
            echo=quiet,
        )
    for bad, message in [
        ("a=1,c=1", "'c' is not a source of --data"),
        ("a=-1,b=1", "weights must be 0 or more"),
        ("a=0,b=0", "every weight is 0"),
    ]:
        with pytest.raises(UnmaskError, match=message):
            TrainConfig(data=["a=x", "b=y"], model="m", out="o", mix=bad)
    with pytest.raises(UnmaskError, match=r"--mix: mixes several --data stores; one was given"):
        TrainConfig(data=["x"], model="m", out="o", mix="x=1")
    for taken in ("len256", "web@x"):  # the suffixes of other window lengths' keys (eval_loss@len256)
        with pytest.raises(UnmaskError, match=f"--data {taken}=y: a source may not be named '{taken}'"):
            TrainConfig(data=["a=x", f"{taken}=y"], model="m", out="o")
    assert TrainConfig(data=["runs/len256"], model="m", out="o").data == ["runs/len256"], "one store's name is no key"


def test_a_tokenizer_learns_from_a_weighted_mixture_so_a_small_source_is_not_drowned(tmp_path):
    from transformers import AutoTokenizer

    from unmask.data.tokenizer_training import train_tokenizer

    big, small = tmp_path / "big", tmp_path / "small"
    big.mkdir()
    small.mkdir()
    for i, text in enumerate(make_documents(300, seed=1)):  # varied enough to fill a small vocabulary
        (big / f"{i}.txt").write_text(text)
    for i in range(3):
        (small / f"{i}.txt").write_text("zyxwortel quombat zyxwortel quombat vrelindor " * 2)
    common = dict(kind="wordpiece", vocab_size=130, min_frequency=2)
    train_tokenizer(TokenizerConfig(sources=[str(big), str(small)], out=str(tmp_path / "plain"), **common), progress=False)
    train_tokenizer(
        TokenizerConfig(sources=[f"big={big}", f"small={small}"], mix="big=0.5,small=0.5", out=str(tmp_path / "mixed"), **common),
        progress=False,
    )
    pieces = lambda folder: len(AutoTokenizer.from_pretrained(folder).tokenize("zyxwortel quombat vrelindor"))
    assert pieces(tmp_path / "mixed") < pieces(tmp_path / "plain"), "the small source's words earn vocabulary of their own"
