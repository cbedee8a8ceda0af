import dataclasses
import json
import math

import pytest
import torch
from conftest import quiet, train_config
from safetensors.torch import load_file

from unmask.config import TrainConfig, UnmaskError
from unmask.pretrain.train import build_optimizer, train
from unmask.storage import checkpoint
from unmask.storage.rundir import RunDir


def run(cfg: TrainConfig, **kwargs) -> dict:
    return train(cfg, progress=False, echo=quiet, **kwargs)


def test_optimizer_never_decays_biases_or_layernorm(tiny_model_dir):
    from unmask.models.masked_lm import load_mlm

    lm = load_mlm(str(tiny_model_dir), echo=quiet)
    cfg = TrainConfig(data="x", out="y", model="m")
    decayed, plain = build_optimizer(lm, cfg, torch.device("cpu")).param_groups
    names = {id(p): n for n, p in lm.model.named_parameters()}
    assert decayed["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    assert all("bias" in names[id(p)] or "LayerNorm" in names[id(p)] for p in plain["params"])
    assert not any("bias" in names[id(p)] or "LayerNorm" in names[id(p)] for p in decayed["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(lm.parameters()))


def test_fresh_head_weights_get_their_own_learning_rate_scale(tmp_path):
    from transformers import BertConfig, BertModel

    from unmask.models.masked_lm import load_mlm

    BertModel(BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(
        tmp_path
    )
    lm = load_mlm(str(tmp_path), echo=quiet)
    assert "cls.predictions.transform.dense.weight" in lm.fresh_parameters
    assert not any(name.startswith("bert.") for name in lm.fresh_parameters), "the tied decoder is the pretrained embedding"
    groups = build_optimizer(lm, TrainConfig(data="x", out="y", model="m", fresh_lr_scale=10.0), torch.device("cpu")).param_groups
    names = {id(p): n for n, p in lm.model.named_parameters()}
    for group in groups:
        fresh = {names[id(p)] in lm.fresh_parameters for p in group["params"]}
        assert fresh == {group["lr_scale"] == 10.0}


def test_a_run_writes_config_metrics_checkpoints_and_a_model_transformers_can_use(store_dir, tiny_model_dir, tmp_path):
    from transformers import pipeline

    out = tmp_path / "run"
    summary = run(train_config(store_dir, tiny_model_dir, out))
    assert summary["steps"] == 6 and summary["eval_masked_tokens"] > 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [1, 2, 3, 4, 5, 6]
    assert all(0.05 < r["mask_rate"] < 0.3 for r in train_records), "the real masking rate is reported and near 15%"
    assert [r["step"] for r in records if "eval_loss" in r] == [3, 6]
    assert (out / "config.yaml").read_text().startswith("data:")
    assert [p.name for p in [p for _, p in RunDir(out).checkpoint_steps()]] == ["step-00000003", "step-00000006"]
    fill = pipeline("fill-mask", model=str(out / "model"))
    predictions = fill("the cat [MASK] the door today.")
    assert len(predictions) == 5 and all(0 <= p["score"] <= 1 for p in predictions)


def test_training_lowers_the_held_out_loss(store_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    run(train_config(store_dir, tiny_model_dir, out, max_steps=40, eval_every=40, checkpoint_every=0, lr=3e-3))
    first_loss = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_loss"] < first_loss - 0.4, (first_loss, summary["eval_loss"])  # ln(110) = 4.7 at the start
    assert summary["eval_perplexity"] == pytest.approx(math.exp(summary["eval_loss"]))


def test_interrupted_then_resumed_run_ends_with_the_same_weights(store_dir, tiny_model_dir, tmp_path):
    straight = tmp_path / "straight"
    run(train_config(store_dir, tiny_model_dir, straight, grad_accum=2, max_steps=7))

    def crash_after_step_5(step: int) -> None:
        if step == 5:
            raise KeyboardInterrupt

    broken = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        run(train_config(store_dir, tiny_model_dir, broken, grad_accum=2, max_steps=7), on_step=crash_after_step_5)
    assert checkpoint.latest_checkpoint(RunDir(broken)).name == "step-00000003"
    run(train_config(store_dir, tiny_model_dir, broken, grad_accum=2, max_steps=7, resume=True))

    a, b = load_file(str(straight / "model" / "model.safetensors")), load_file(str(broken / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    lines = lambda p: [json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines(broken)] == [r["step"] for r in lines(straight)], "no duplicated metric lines after resume"
    assert [r.get("loss") for r in lines(broken)] == [r.get("loss") for r in lines(straight)]


def test_existing_run_needs_resume_and_resume_refuses_changed_settings(store_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    run(train_config(store_dir, tiny_model_dir, out, max_steps=2))
    with pytest.raises(UnmaskError, match="already holds a run"):
        run(train_config(store_dir, tiny_model_dir, out, max_steps=2))
    with pytest.raises(UnmaskError, match=r"settings differ .*lr: 0\.001 -> 0\.002"):
        run(train_config(store_dir, tiny_model_dir, out, max_steps=2, lr=2e-3, resume=True))


def test_a_diverging_loss_stops_training_and_keeps_earlier_checkpoints(store_dir, tiny_model_dir, tmp_path, monkeypatch):
    from unmask.models.masked_lm import MaskedLM

    real = MaskedLM.loss_sum
    calls = {"n": 0}

    def poisoned(self, *args):
        calls["n"] += 1
        loss, logits = real(self, *args)
        return (loss * float("nan"), logits) if calls["n"] > 4 else (loss, logits)

    monkeypatch.setattr(MaskedLM, "loss_sum", poisoned)
    out = tmp_path / "run"
    with pytest.raises(UnmaskError, match="step 5: training loss is nan"):
        run(train_config(store_dir, tiny_model_dir, out, max_steps=6, checkpoint_every=2, eval_every=0))
    assert [p.name for p in [p for _, p in RunDir(out).checkpoint_steps()]] == ["step-00000002", "step-00000004"]
    assert not (out / "model").exists()


def test_tokenizer_mismatch_between_store_and_model_is_refused(store_dir, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "cat": 5}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    other = PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
    )
    folder = tmp_path / "other"
    BertForMaskedLM(
        BertConfig(vocab_size=6, hidden_size=16, num_hidden_layers=1, num_attention_heads=1, intermediate_size=32)
    ).save_pretrained(folder)
    other.save_pretrained(folder)
    with pytest.raises(UnmaskError, match="maps text to other ids"):
        run(train_config(store_dir, folder, tmp_path / "run"))


def test_from_scratch_uses_the_store_tokenizer_and_a_saved_config_reproduces_the_run(store_dir, tmp_path):
    from unmask.config import load_yaml

    cfg = TrainConfig(
        data=str(store_dir), out=str(tmp_path / "scratch"), from_scratch="tiny", seq_len=32, batch_size=4, max_steps=2, eval_every=0
    )
    first = run(cfg)
    reloaded = load_yaml(TrainConfig, tmp_path / "scratch" / "config.yaml")
    assert reloaded == cfg
    again = run(dataclasses.replace(reloaded, out=str(tmp_path / "again")))
    assert again["eval_loss"] == first["eval_loss"], "the saved config reproduces the run exactly"
    weights = [load_file(str(tmp_path / name / "model" / "model.safetensors")) for name in ("scratch", "again")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_no_held_out_split_means_no_empty_eval_records(tmp_path, corpus_dir, tokenizer_dir, tiny_model_dir):
    from unmask.config import PrepareConfig
    from unmask.data.prepare import prepare

    store = tmp_path / "store"
    prepare(PrepareConfig(sources=[str(corpus_dir)], out=str(store), tokenizer=str(tokenizer_dir), val_fraction=0.0), progress=False)
    out = tmp_path / "run"
    summary = run(train_config(store, tiny_model_dir, out, max_steps=4, eval_every=2))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert not any(key.startswith("eval_") for r in records for key in r), records
    assert "eval_loss" not in summary and summary["steps"] == 4


def test_resume_on_another_device_type_is_refused(store_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    run(train_config(store_dir, tiny_model_dir, out, max_steps=2))
    state_path = checkpoint.latest_checkpoint(RunDir(out)) / "state.json"
    state = json.loads(state_path.read_text())
    state["info"]["device_type"] = "cuda"
    state_path.write_text(json.dumps(state))
    with pytest.raises(UnmaskError, match="trained on cuda, this run would continue on cpu"):
        run(train_config(store_dir, tiny_model_dir, out, max_steps=2, resume=True))


def test_a_checkpoint_from_before_the_window_order_says_its_epoch_is_drawn_anew(store_dir, tiny_model_dir, tmp_path):
    from unmask.data.windows import WINDOW_ORDER

    out = tmp_path / "run"
    run(train_config(store_dir, tiny_model_dir, out, max_steps=2))
    state_path = checkpoint.latest_checkpoint(RunDir(out)) / "state.json"
    state = json.loads(state_path.read_text())
    assert state["info"]["window_order"] == WINDOW_ORDER and state["data"]["position"] > 0, "mid-epoch, the order named"
    del state["info"]["window_order"]  # as unmask wrote it before the order was a bijection
    state_path.write_text(json.dumps(state))
    said: list[str] = []
    train(train_config(store_dir, tiny_model_dir, out, max_steps=3, resume=True), progress=False, echo=said.append)
    assert any("ordered windows otherwise (NumPy permutations)" in line and WINDOW_ORDER in line for line in said), said
    said.clear()  # the checkpoint of step 3 names its order: nothing to say
    train(train_config(store_dir, tiny_model_dir, out, max_steps=4, resume=True), progress=False, echo=said.append)
    assert not any("ordered windows otherwise" in line for line in said), said


def test_a_store_that_changed_under_the_run_is_refused_on_resume_before_any_step(corpus_dir, tokenizer_dir, tiny_model_dir, tmp_path):
    import shutil

    from unmask.config import PrepareConfig
    from unmask.data.prepare import prepare

    store, out = tmp_path / "store", tmp_path / "run"
    prepare(PrepareConfig(sources=[str(corpus_dir)], out=str(store), tokenizer=str(tokenizer_dir), val_fraction=0.1), progress=False)
    run(train_config(store, tiny_model_dir, out, max_steps=2))
    half = tmp_path / "half"
    half.mkdir()
    for path in sorted(corpus_dir.iterdir())[:20]:
        shutil.copy(path, half / path.name)
    prepare(
        PrepareConfig(sources=[str(half)], out=str(store), tokenizer=str(tokenizer_dir), val_fraction=0.1, overwrite=True), progress=False
    )
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    with pytest.raises(
        UnmaskError, match=r"--data .*store: [\d,]+ training windows now, [\d,]+ when the checkpoint was written: the store changed"
    ):
        run(train_config(store, tiny_model_dir, out, max_steps=3, resume=True))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before, "nothing written"


@pytest.mark.parametrize("architecture", ["roberta", "distilbert"])
def test_roberta_and_distilbert_train_from_local_folders(architecture, request, corpus_dir, tmp_path):
    from transformers import pipeline

    from unmask.config import PrepareConfig
    from unmask.data.prepare import prepare
    from unmask.data.store import TokenStore
    from unmask.infer import Filler

    folder = request.getfixturevalue(f"{architecture}_dir")
    store = tmp_path / "store"
    prepare(PrepareConfig(sources=[str(corpus_dir)], out=str(store), tokenizer=str(folder), val_fraction=0.1), progress=False)
    vocab = TokenStore.open(store).vocabulary()
    if architecture == "roberta":
        assert (vocab.opener_id, vocab.closer_id, vocab.pad_id, vocab.mask_id) == (0, 2, 1, 4)
    out = tmp_path / "run"
    summary = run(train_config(store, folder, out, max_steps=3, seq_len=64, checkpoint_every=0))
    assert summary["steps"] == 3 and math.isfinite(summary["eval_loss"])
    fill = pipeline("fill-mask", model=str(out / "model"))
    mask = fill.tokenizer.mask_token
    assert len(fill(f"the cat {mask} the door.")) == 5
    filler = Filler(str(out), device="cpu", echo=quiet)
    [result] = filler.fill(["the cat [MASK] the door."], top_k=2)  # [MASK] works for <mask> models too
    assert len(result.masks) == 1 and len(result.masks[0].candidates) == 2


def test_dropout_override_applies_in_training_but_not_to_the_saved_config(store_dir, tiny_model_dir, tmp_path, monkeypatch):
    import unmask.pretrain.train as train_module

    seen = {}
    real = train_module.set_dropout

    def spy(model, probability):
        real(model, probability)
        seen["p"] = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}

    monkeypatch.setattr(train_module, "set_dropout", spy)
    out = tmp_path / "run"
    run(train_config(store_dir, tiny_model_dir, out, max_steps=1, dropout=0.0, checkpoint_every=0))
    assert seen["p"] == {0.0}
    saved = json.loads((out / "model" / "config.json").read_text())
    assert saved["hidden_dropout_prob"] == 0.1 and saved["attention_probs_dropout_prob"] == 0.1


@pytest.mark.slow
def test_compiled_encoder_trains_exactly_like_the_eager_one(store_dir, tiny_model_dir, tmp_path, monkeypatch):
    # The eager backend traces the layers with dynamo but runs the same kernels, so the
    # losses must match to the bit; inductor would take half a minute to compile here.
    calls = []
    real_compile = torch.compile

    def eager_compile(target, **options):
        calls.append(target)
        return real_compile(target, **{**options, "backend": "eager"})

    monkeypatch.setattr(torch, "compile", eager_compile)
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    run(train_config(store_dir, tiny_model_dir, eager, max_steps=3, eval_every=0, checkpoint_every=0))
    run(train_config(store_dir, tiny_model_dir, compiled, max_steps=3, eval_every=0, checkpoint_every=0, compile=True))

    def losses(out):
        return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]

    assert len(calls) == 1, "the tiny BERT's one full-width layer is compiled; its last layer runs at masked positions"
    assert losses(compiled) == losses(eager) and len(losses(eager)) == 3
    saved = [load_file(checkpoint.latest_checkpoint(RunDir(out)) / "model.safetensors") for out in (compiled, eager)]
    assert set(saved[0]) == set(saved[1]), "compiling must not rename parameters"


class FakeClock:
    """Each reading is `step` seconds after the last. Training reads it at the start and the
    end of every step, so every step lasts `step` seconds (and the time between steps is not counted)."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_a_time_budget_ends_the_run_and_its_schedules_follow_the_time_spent(store_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    cfg = train_config(
        store_dir,
        tiny_model_dir,
        out,
        max_steps=None,
        time_budget="60s",
        warmup_steps=None,
        warmup_fraction=0.2,
        mask_prob=0.3,
        mask_prob_end=0.15,
        mask_schedule="linear",
        eval_every=0,
        checkpoint_every=3,
    )
    summary = train(cfg, progress=False, echo=quiet, clock=FakeClock(10.0))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert summary["steps"] == 6 and [r["train_seconds"] for r in records] == [10, 20, 30, 40, 50, 60]
    # Warmup over the first 20% of the time, then linear decay over the rest.
    assert [r["lr"] for r in records] == pytest.approx(
        [
            0.0,
            1e-3 * (10 / 60) / 0.2,
            1e-3 * (1 - (20 / 60 - 0.2) / 0.8),
            1e-3 * (1 - (30 / 60 - 0.2) / 0.8),
            1e-3 * (1 - (40 / 60 - 0.2) / 0.8),
            1e-3 * (1 - (50 / 60 - 0.2) / 0.8),
        ]
    )
    assert [r["mask_prob"] for r in records] == pytest.approx([0.3 - 0.15 * k / 6 for k in range(6)])
    assert (out / "model" / "model.safetensors").is_file() and checkpoint.latest_checkpoint(RunDir(out)).name == "step-00000006"


def test_a_resumed_budgeted_run_carries_the_time_already_spent(store_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    cfg = train_config(store_dir, tiny_model_dir, out, max_steps=None, time_budget="1m", eval_every=0, checkpoint_every=2)

    def stop_after_step_3(step: int) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, echo=quiet, clock=FakeClock(10.0), on_step=stop_after_step_3)
    summary = train(dataclasses.replace(cfg, resume=True), progress=False, echo=quiet, clock=FakeClock(10.0))
    assert summary["steps"] == 6, "2 steps (20 s) from the checkpoint, then 4 more to the minute"
    seconds = [json.loads(line)["train_seconds"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert seconds == [10, 20, 30, 40, 50, 60]


@pytest.mark.parametrize("masking", ["whole-word", "span"])
def test_word_level_masking_trains_and_logs_its_real_rate(store_dir, tiny_model_dir, tmp_path, masking):
    out = tmp_path / "run"
    summary = run(
        train_config(store_dir, tiny_model_dir, out, max_steps=4, masking=masking, mask_prob=0.3, eval_every=0, checkpoint_every=0)
    )
    rates = [json.loads(line)["mask_rate"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    # Four steps of 4 x 32 tokens are few for spans: the statistical tests in test_masking pin the rate down.
    assert summary["steps"] == 4 and all(0 < r < 1 for r in rates) and 0.15 < sum(rates) / len(rates) < 0.45, rates
    assert summary["eval_masked_tokens"] > 0, "evaluation keeps its own 15% token masks"


def test_export_turns_any_complete_checkpoint_into_a_model_folder(store_dir, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForMaskedLM, pipeline

    from unmask.runtime.export import export_checkpoint

    out = tmp_path / "run"

    def stop_after_step_5(step: int) -> None:
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # a run that never finished has no model/, but its checkpoints export
        run(train_config(store_dir, tiny_model_dir, out, max_steps=6, checkpoint_every=2, keep_checkpoints=5), on_step=stop_after_step_5)
    assert not (out / "model").exists()
    exported = export_checkpoint(out, tmp_path / "step2", step=2, echo=quiet)
    assert exported.name == "step-00000002"
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "step2")
    saved = load_file(str(exported / "model.safetensors"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    assert len(pipeline("fill-mask", model=str(tmp_path / "step2"))("the cat [MASK] the door.")) == 5
    assert export_checkpoint(out, tmp_path / "newest", echo=quiet).name == "step-00000004"
    with pytest.raises(UnmaskError, match="already exists"):
        export_checkpoint(out, tmp_path / "newest", echo=quiet)
    with pytest.raises(UnmaskError, match=r"--step 3: .* no checkpoint at that step \(steps: 2, 4\)"):
        export_checkpoint(out, tmp_path / "x", step=3, echo=quiet)
    with pytest.raises(UnmaskError, match="not a run folder"):
        export_checkpoint(tmp_path, tmp_path / "y", echo=quiet)


def test_a_finished_run_can_be_extended_and_resuming_it_adds_no_duplicate_lines(store_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    run(train_config(store_dir, tiny_model_dir, out, max_steps=4, eval_every=0, checkpoint_every=2))
    before = (out / "metrics.jsonl").read_text()
    run(train_config(store_dir, tiny_model_dir, out, max_steps=4, eval_every=0, checkpoint_every=2, resume=True))
    assert (out / "metrics.jsonl").read_text() == before, "resuming a finished run appends nothing, its final eval included"
    lines = []
    summary = train(
        train_config(store_dir, tiny_model_dir, out, max_steps=6, eval_every=0, checkpoint_every=2, resume=True),
        progress=False,
        echo=lines.append,
    )
    assert summary["steps"] == 6
    assert any("--max-steps 4 -> 6" in line and "not identical to a run planned this long" in line for line in lines)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_with_nothing_to_resume_says_so_and_a_config_without_checkpoint_starts_over(store_dir, tiny_model_dir, tmp_path):
    from unmask.config import save_yaml

    lines = []
    out = tmp_path / "fresh"
    train(train_config(store_dir, tiny_model_dir, out, max_steps=1, eval_every=0, resume=True), progress=False, echo=lines.append)
    assert any(line == f"note: --resume: nothing to resume in {out}; starting a new run" for line in lines)
    # A start that died before its first checkpoint, resumed as a requeued job resumes: from step 0.
    failed = tmp_path / "failed"
    settings = train_config(store_dir, tiny_model_dir, failed, max_steps=1, eval_every=0, resume=True)
    failed.mkdir()
    save_yaml(settings, failed / "config.yaml")
    lines.clear()
    assert train(settings, progress=False, echo=lines.append)["steps"] == 1
    assert f"note: --resume: {failed} stopped before its first checkpoint; starting it over from step 0" in lines
    conflicting = tmp_path / "conflicting"
    conflicting.mkdir()
    (conflicting / "config.yaml").write_text("data: x\nout: y\nmodel: m\n")
    with pytest.raises(UnmaskError, match=r"has no checkpoint yet, and these settings differ from its config.yaml: data: \['x'\] -> "):
        run(train_config(store_dir, tiny_model_dir, conflicting, max_steps=1, resume=True))
    assert run(train_config(store_dir, tiny_model_dir, conflicting, max_steps=1, eval_every=0))["steps"] == 1, "a plain retry is welcome"


def test_a_step_that_sees_windows_twice_is_warned_about_once(store_dir, tiny_model_dir, tmp_path):
    lines = []
    train(
        train_config(store_dir, tiny_model_dir, tmp_path / "run", batch_size=600, max_steps=1, eval_every=0),
        progress=False,
        echo=lines.append,
    )
    repeats = [line for line in lines if line.startswith("warning: a step takes 600 windows but the store has only")]
    assert len(repeats) == 1 and "times" in repeats[0]


def test_a_run_folder_is_a_model_to_continue_from(store_dir, tiny_model_dir, tmp_path):
    first = tmp_path / "first"
    run(train_config(store_dir, tiny_model_dir, first, max_steps=2, eval_every=0))
    summary = run(train_config(store_dir, first, tmp_path / "second", max_steps=2, eval_every=0))
    assert summary["steps"] == 2


def test_a_run_config_describes_the_run_so_reusing_it_never_resumes_by_itself(store_dir, tiny_model_dir, tmp_path, capsys):
    """Issue 26, item 2: config.yaml of a resumed run used to say `resume: true`, so
    `train --config RUN/config.yaml` silently resumed and rewrote the run."""
    import yaml

    from unmask.cli.main import main

    out = tmp_path / "run"
    run(train_config(store_dir, tiny_model_dir, out, max_steps=2, eval_every=0, checkpoint_every=2))
    run(train_config(store_dir, tiny_model_dir, out, max_steps=3, eval_every=0, checkpoint_every=2, resume=True))
    assert yaml.safe_load((out / "config.yaml").read_text())["resume"] is False
    before = {p.name: p.stat().st_mtime_ns for p in (out / "model").iterdir()} | {"summary": (out / "summary.json").stat().st_mtime_ns}
    assert main(["train", "--config", str(out / "config.yaml"), "--max-steps", "4", "--progress", "none"]) == 1
    assert "already holds a run" in capsys.readouterr().err
    after = {p.name: p.stat().st_mtime_ns for p in (out / "model").iterdir()} | {"summary": (out / "summary.json").stat().st_mtime_ns}
    assert after == before, "nothing existing is rewritten without --resume"
    assert main(["train", "--out", str(out), "--resume", "--max-steps", "4", "--progress", "none"]) == 0  # a requeued job still continues
    capsys.readouterr()
    assert json.loads((out / "summary.json").read_text())["steps"] == 4


def test_the_start_says_how_a_step_is_made_up_and_warns_of_a_warmup_that_outlasts_the_run(store_dir, tiny_model_dir, tmp_path):
    lines = []
    train(
        train_config(store_dir, tiny_model_dir, tmp_path / "run", grad_accum=2, warmup_steps=10, max_steps=3),
        progress=False,
        echo=lines.append,
    )
    start = next(line for line in lines if line.startswith("training "))
    assert "3 steps of 8 x 32 tokens (8 windows = 4 x 2 micro-batches)" in start, start
    warned = [line for line in lines if line.startswith("warning: warmup of 10 steps outlasts the run's 3")]
    assert len(warned) == 1 and "never passes 0.0003 (30.0% of the 0.001 peak)" in warned[0], lines
    lines.clear()
    train(train_config(store_dir, tiny_model_dir, tmp_path / "plain", max_steps=3), progress=False, echo=lines.append)
    start = next(line for line in lines if line.startswith("training "))
    assert "windows =" not in start and not any(line.startswith("warning: warmup") for line in lines), lines


def test_resuming_does_not_claim_a_fresh_head_that_comes_from_the_checkpoint(store_dir, tokenizer_dir, tmp_path):
    from conftest import tiny_bert
    from transformers import AutoTokenizer, BertModel

    headless = tmp_path / "encoder-only"
    BertModel(tiny_bert(len(AutoTokenizer.from_pretrained(tokenizer_dir))).config).save_pretrained(headless)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(headless)
    first = []
    cfg = train_config(store_dir, headless, tmp_path / "run", max_steps=2, checkpoint_every=1)
    train(cfg, progress=False, echo=first.append)
    assert any("has no MLM head; initialised a fresh one" in line for line in first)
    again = []
    train(dataclasses.replace(cfg, resume=True, max_steps=3), progress=False, echo=again.append)
    assert not any("MLM head" in line for line in again), again
    assert any("resumed" in line.lower() for line in again), again


def test_a_data_position_past_the_store_is_refused_even_from_a_checkpoint_that_names_no_windows(tmp_path):
    from types import SimpleNamespace

    from unmask.runtime.resume import refuse_changed_stores

    old = checkpoint.CheckpointInfo(step=3, epoch=1, position=500)  # written before windows were recorded
    with pytest.raises(
        UnmaskError, match=r"--data .*shrunk: the checkpoint's data position \(epoch 1, window 500\) is past the store's 100"
    ):
        refuse_changed_stores(old, [("shrunk", SimpleNamespace(path=tmp_path / "shrunk"))], [100])
    refuse_changed_stores(old, [("same", SimpleNamespace(path=tmp_path / "same"))], [600])  # inside: nothing to say
