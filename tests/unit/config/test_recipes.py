"""Published recipes: what `--recipe` resolves to, what overrides it, and where each value comes from."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import REPO

from unmask.cli.main import parse
from unmask.config import TrainConfig, load_yaml, save_yaml
from unmask.config.recipes import RECIPES, describe, recipe_values

RECIPES_PAGE = REPO / "docs" / "recipes.md"


def resolved(*flags: str, notes: list[str] | None = None) -> TrainConfig:
    _, config = parse(
        ["train", "--data", "store", "--out", "run", "--from-scratch", "tiny", *flags], echo=(notes if notes is not None else []).append
    )
    return config


@pytest.mark.parametrize("name", list(RECIPES))
def test_a_recipes_resolved_settings_are_its_documented_table(name):
    config = resolved("--recipe", name)
    table = RECIPES[name].settings
    assert {key: getattr(config, key) for key in table} == {key: setting.value for key, setting in table.items()}
    assert config.recipe == name
    untouched = {f.name for f in dataclasses.fields(TrainConfig)} - set(table) - {"data", "out", "from_scratch", "recipe"}
    defaults = TrainConfig(data=["store"], out="run", from_scratch="tiny")
    assert all(getattr(config, key) == getattr(defaults, key) for key in untouched), "a recipe sets only what its table lists"
    assert config.scratch_architecture() == RECIPES[name].architecture


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_value_names_its_source_and_the_readme_lists_the_recipe(name):
    recipe = RECIPES[name]
    assert all(setting.source.strip() for setting in {**recipe.settings, **recipe.several_stores}.values())
    text = describe(name)
    assert all(f"--{key.replace('_', '-')} {s.value}" in text for key, s in recipe.settings.items())
    assert f"`--recipe {name}`" in RECIPES_PAGE.read_text(encoding="utf-8"), "the recipes page lists every recipe"


def test_flags_override_a_recipe_and_say_so():
    notes: list[str] = []
    config = resolved("--recipe", "modernbert", "--lr", "3e-4", "--seq-len", "256", notes=notes)
    assert config.lr == 3e-4 and config.seq_len == 256 and config.mask_prob == 0.30
    assert notes[:2] == [
        "note: --recipe modernbert: --lr 0.0003 used instead of the recipe's 0.0008",
        "note: --recipe modernbert: --seq-len 256 used instead of the recipe's 1024",
    ]
    assert len(notes) == 3 and notes[2].startswith("note: --recipe modernbert does not reproduce: StableAdamW"), notes
    notes.clear()
    config = resolved("--recipe", "roberta", "--warmup-fraction", "0.1", "--grad-accum", "2", notes=notes)
    assert config.warmup_steps is None and config.warmup_fraction == 0.1, "a warmup share given replaces the recipe's warmup steps"
    assert config.global_batch is None and config.grad_accum == 2
    assert len(notes) == 2 and "--warmup-steps 24000 is not used" in notes[0]
    assert RECIPES["roberta"].not_reproduced == (), "a recipe that reproduces everything gets no such note"


def test_a_config_file_overrides_a_recipe_and_a_saved_run_resolves_to_itself(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("lr: 0.0002\n", encoding="utf-8")
    config = resolved("--recipe", "cramming", "--config", str(path))
    assert config.lr == 2e-4 and config.mask_prob == 0.25 and config.warmup_start_ratio == 0.25
    save_yaml(config, tmp_path / "config.yaml")
    again = resolved("--config", str(tmp_path / "config.yaml"))
    assert again == config and load_yaml(TrainConfig, tmp_path / "config.yaml").recipe == "cramming"


def test_mixing_settings_apply_only_with_several_stores():
    assert "mix_temperature" not in recipe_values("mmbert", several_stores=False)
    _, config = parse(["train", "--data", "web=a", "code=b", "--out", "run", "--from-scratch", "tiny", "--recipe", "mmbert"], echo=print)
    assert config.mix_temperature == pytest.approx(1 / 0.7, rel=1e-3)


def test_global_batch_sets_the_accumulation_for_any_number_of_processes():
    config = TrainConfig(data=["s"], out="o", from_scratch="tiny", batch_size=8, global_batch=64)
    assert config.with_global_batch(1).grad_accum == 8
    assert config.with_global_batch(4).grad_accum == 2
    assert config.with_global_batch(4).windows_per_step(4) == 64
    with pytest.raises(Exception, match="--global-batch 64: not a multiple of --batch-size 8 x 3 process"):
        config.with_global_batch(3)


def test_train_help_says_what_every_recipe_cannot_reproduce(capsys):
    with pytest.raises(SystemExit):
        parse(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for recipe in RECIPES.values():
        for item in recipe.not_reproduced:
            assert f"{recipe.name}:" in shown and " ".join(item.split()) in shown
