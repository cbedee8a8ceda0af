"""Settings: validation naming the flag, YAML round trips, unknown keys, resume rules."""

import dataclasses

import pytest

from unmask.config import (
    EmbedConfig,
    EvalConfig,
    FillConfig,
    TrainConfig,
    UnmaskError,
    from_dict,
    load_yaml,
    refused_resume_changes,
    save_yaml,
    to_dict,
)


@pytest.mark.parametrize(
    "overrides,flag",
    [(dict(seq_len=4), "seq-len"), (dict(batch_size=0), "batch-size"), (dict(mask_prob=1.0), "mask-prob"), (dict(model=None), "model")],
)
def test_invalid_settings_name_their_flag(overrides, flag):
    settings = dict(data="d", out="o", model="m")
    settings.update(overrides)
    with pytest.raises(UnmaskError, match=f"--{flag}"):
        TrainConfig(**settings)


@pytest.mark.parametrize(
    "cls,values,flag",
    [
        (FillConfig, dict(model="m", top_k=0), "--top-k"),
        (EvalConfig, dict(model="m", data=["d"], seq_len=2), "--seq-len"),
        (EmbedConfig, dict(model="m"), "--file"),
        (EmbedConfig, dict(model="m", file="f", batch_size=0), "--batch-size"),
    ],
)
def test_use_command_settings_are_validated_too(cls, values, flag):
    with pytest.raises(UnmaskError, match=flag):
        cls(**values)


def test_yaml_round_trip_and_unknown_keys(tmp_path):
    config = TrainConfig(data="d", out="o", from_scratch="tiny", lr=1e-3, max_steps=5)
    save_yaml(config, tmp_path / "run.yaml")
    assert load_yaml(TrainConfig, tmp_path / "run.yaml") == config
    (tmp_path / "bad.yaml").write_text("data: x\nout: y\nmodel: m\nlearning_rate: 1\n")
    with pytest.raises(UnmaskError, match=r"bad\.yaml: unknown setting\(s\) learning_rate"):
        load_yaml(TrainConfig, tmp_path / "bad.yaml")
    (tmp_path / "broken.yaml").write_text("data: [unclosed\n")
    with pytest.raises(UnmaskError, match=r"broken\.yaml: cannot read config"):
        load_yaml(TrainConfig, tmp_path / "broken.yaml")
    with pytest.raises(UnmaskError, match="expected a mapping"):
        from_dict(TrainConfig, ["a", "b"], "list.yaml")


def test_resume_may_change_logging_but_not_the_arithmetic():
    saved = to_dict(TrainConfig(data="d", out="o", model="m"))
    assert refused_resume_changes(saved, to_dict(TrainConfig(data="d", out="o", model="m", eval_every=7, resume=True, device="cpu"))) == []
    refused = refused_resume_changes(saved, to_dict(TrainConfig(data="d", out="o", model="m", lr=1e-3, seed=3)))
    assert refused == ["lr: 0.0003 -> 0.001", "seed: 0 -> 3"]


def test_total_steps_and_warmup():
    config = TrainConfig(data="d", out="o", model="m", batch_size=4, grad_accum=2, epochs=2.5)
    assert config.windows_per_step() == 8 and config.total_steps(80) == 25
    assert TrainConfig(data="d", out="o", model="m", batch_size=4, max_steps=7, epochs=1).total_steps(80) == 7
    assert TrainConfig(data="d", out="o", model="m", warmup_fraction=0.1).warmup(200) == 20
    assert TrainConfig(data="d", out="o", model="m", warmup_steps=3).warmup(200) == 3


def test_train_settings_come_in_sections_that_a_file_may_nest_or_not(tmp_path):
    from unmask.config import FinetuneConfig, load_yaml

    sections = TrainConfig.sections()
    assert list(sections) == [
        "downstream", "system", "checkpoints", "evaluation", "schedule", "optimizer", "masking", "model", "data"
    ]  # fmt: skip
    every = [name for fields in sections.values() for name in fields]
    assert sorted(every) == sorted(f.name for f in dataclasses.fields(TrainConfig)), "every setting in exactly one section"
    assert sections["optimizer"] == FinetuneConfig.sections()["optimizer"], "one optimizer section for both loops"
    nested, flat = tmp_path / "nested.yaml", tmp_path / "flat.yaml"
    nested.write_text("data: d\nout: o\nmodel: m\noptimizer:\n  lr: 0.001\n  on_nonfinite: skip\nschedule:\n  max_steps: 5\n")
    flat.write_text("data: d\nout: o\nmodel: m\nlr: 0.001\non_nonfinite: skip\nmax_steps: 5\n")
    assert load_yaml(TrainConfig, nested) == load_yaml(TrainConfig, flat)
    (tmp_path / "stray.yaml").write_text("data: d\nout: o\nmodel: m\noptimizer:\n  max_steps: 5\n")
    with pytest.raises(UnmaskError, match=r"stray.yaml: max_steps under 'optimizer:' is not a setting of that section"):
        load_yaml(TrainConfig, tmp_path / "stray.yaml")
    (tmp_path / "twice.yaml").write_text("data: d\nout: o\nmodel: m\nlr: 0.1\noptimizer:\n  lr: 0.001\n")
    with pytest.raises(UnmaskError, match=r"twice.yaml: 'lr' is given twice"):
        load_yaml(TrainConfig, tmp_path / "twice.yaml")
    # A bound is declared once, by the section that has the field, and checked for both loops.
    with pytest.raises(UnmaskError, match=r"--beta2: must be in \[0, 1\), got 1.5"):
        TrainConfig(data="d", out="o", model="m", beta2=1.5)
    with pytest.raises(UnmaskError, match=r"--beta2: must be in \[0, 1\), got 1.5"):
        FinetuneConfig(model="m", out="o", train="t.jsonl", eval="e.jsonl", beta2=1.5)
