"""Published pretraining recipes, each value with where it was published: `RECIPES`.

`unmask train --recipe NAME` starts from a recipe's settings instead of unmask's defaults;
a --config file and flags still override them, and the run's config.yaml records the
resolved values and the recipe's name. A recipe sets how a family was trained (masking,
optimizer, schedule, window length, global batch), never how long: a recipe's published
length (steps or tokens) is the authors' budget, not the user's. Warmups published in
steps or tokens are kept in steps at the published global batch.

What a recipe cannot reproduce in unmask (another optimizer, a batch-size ramp, an
architecture transformers does not ship) is in its `not_reproduced`, shown with the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from unmask.config.base import flag


@dataclass(frozen=True)
class Setting:
    value: Any
    source: str


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    """One line: who trained what with it, and when to choose it."""
    citation: str
    architecture: str
    """The --arch a --from-scratch run gets when neither --from-scratch nor --arch names one."""
    settings: dict[str, Setting]
    """TrainConfig field -> published value and its source."""
    not_reproduced: tuple[str, ...] = ()
    several_stores: dict[str, Setting] = field(default_factory=dict)
    """Settings that apply only when --data gives several stores (mixing)."""
    next_phases: tuple[str, ...] = ()
    """The later phases of the published schedule, as the flags that continue a run into them."""


_MODERNBERT_YAML = "AnswerDotAI/ModernBERT yamls/modernbert/modernbert-base-pretrain.yaml"
_MODERNBERT_PAPER = "Warner et al. 2024 (arXiv:2412.13663) §2.2"
_MOSAIC_YAML = "mosaicml/examples examples/benchmarks/bert/yamls/main/mosaic-bert-base-uncased.yaml"
_ROBERTA = "Liu et al. 2019 (arXiv:1907.11692) Table 9, BASE"
_CRAMMING = "JonasGeiping/cramming cramming/config/train/bert-o4.yaml"
_CRAMMING_ADAM = "JonasGeiping/cramming cramming/config/train/optim/adam.yaml"
_NEOBERT_PAPER = "Le Breton et al. 2025 (arXiv:2502.19587) §3"
_NEOBERT_CONF = "chandar-lab/NeoBERT conf/"
_MMBERT = "Marone et al. 2025 (arXiv:2509.06888) §3"

RECIPES: dict[str, Recipe] = {
    "modernbert": Recipe(
        name="modernbert",
        summary="ModernBERT-base (2024): 30% masking, long stable phase at 8e-4, 1,024-token windows; extend to 8,192 afterwards",
        citation=_MODERNBERT_PAPER,
        architecture="modernbert",
        settings={
            "mask_prob": Setting(0.30, f"{_MODERNBERT_YAML}: mlm_probability 0.3"),
            "lr": Setting(8e-4, f"{_MODERNBERT_YAML}: optimizer.lr (large: 5e-4)"),
            "beta1": Setting(0.9, f"{_MODERNBERT_YAML}: optimizer.betas"),
            "beta2": Setting(0.98, f"{_MODERNBERT_YAML}: optimizer.betas"),
            "adam_eps": Setting(1e-6, f"{_MODERNBERT_YAML}: optimizer.eps"),
            "weight_decay": Setting(1e-5, f"{_MODERNBERT_YAML}: optimizer.weight_decay"),
            "schedule": Setting(
                "wsd", f"{_MODERNBERT_YAML}: scheduler warmup_stable_decay; {_MODERNBERT_PAPER}: trapezoidal, 1-sqrt decay"
            ),
            "warmup_steps": Setting(636, f"{_MODERNBERT_YAML}: t_warmup 3B tokens = 636 steps of 4,608 x 1,024"),
            "decay_fraction": Setting(0.025, f"{_MODERNBERT_PAPER}: the 1-sqrt decay is the last 50B of about 2T tokens"),
            "seq_len": Setting(1024, f"{_MODERNBERT_YAML}: max_seq_len"),
            "global_batch": Setting(4608, f"{_MODERNBERT_YAML}: global_train_batch_size"),
            "clip_grad_norm": Setting(0.0, f"{_MODERNBERT_YAML}: no gradient clipping"),
        },
        not_reproduced=(
            "StableAdamW (AdamW with Adafactor-style update clipping): unmask uses AdamW",
            "the batch-size warmup from 768 to 4,608 sequences over the first 50B tokens",
            "dropout 0.1 on the attention output only: transformers' ModernBERT has one attention dropout for both",
        ),
        next_phases=(
            "context extension: --model RUN --seq-len 8192 --rope-theta 160000 --lr 3e-4 (250B tokens at constant lr, then the 1-sqrt decay)",
        ),
    ),
    "mosaicbert": Recipe(
        name="mosaicbert",
        summary="MosaicBERT-base (2023): BERT in a day on 8 GPUs, 30% masking, 128-token windows, linear decay to 2%",
        citation="Portes et al. 2023 (arXiv:2312.17482)",
        architecture="bert",
        settings={
            "mask_prob": Setting(0.30, f"{_MOSAIC_YAML}: mlm_probability 0.3"),
            "lr": Setting(5e-4, f"{_MOSAIC_YAML}: optimizer.lr"),
            "beta1": Setting(0.9, f"{_MOSAIC_YAML}: optimizer.betas"),
            "beta2": Setting(0.98, f"{_MOSAIC_YAML}: optimizer.betas"),
            "adam_eps": Setting(1e-6, f"{_MOSAIC_YAML}: optimizer.eps"),
            "weight_decay": Setting(1e-5, f"{_MOSAIC_YAML}: optimizer.weight_decay"),
            "schedule": Setting("linear", f"{_MOSAIC_YAML}: linear_decay_with_warmup"),
            "warmup_fraction": Setting(0.06, f"{_MOSAIC_YAML}: t_warmup 0.06dur"),
            "min_lr_ratio": Setting(0.02, f"{_MOSAIC_YAML}: alpha_f 0.02"),
            "seq_len": Setting(128, f"{_MOSAIC_YAML}: max_seq_len"),
            "global_batch": Setting(4096, f"{_MOSAIC_YAML}: global_train_batch_size"),
            "clip_grad_norm": Setting(0.0, f"{_MOSAIC_YAML}: no gradient clipping"),
        },
        not_reproduced=(
            "MosaicBERT's architecture (ALiBi, GLU, FlashAttention, unpadding): transformers has no such class, so a classic BERT trains",
        ),
    ),
    "roberta": Recipe(
        name="roberta",
        summary="RoBERTa-base (2019): 15% dynamic masking, no NSP, full 512-token windows, big batches",
        citation=_ROBERTA,
        architecture="roberta",
        settings={
            "mask_prob": Setting(0.15, f"{_ROBERTA} (§3.1: 15%, 80/10/10, dynamic)"),
            "mask_replace_prob": Setting(0.8, f"{_ROBERTA} (§3.1)"),
            "random_replace_prob": Setting(0.1, f"{_ROBERTA} (§3.1)"),
            "lr": Setting(6e-4, f"{_ROBERTA}: peak learning rate"),
            "beta1": Setting(0.9, f"{_ROBERTA}: Adam beta1"),
            "beta2": Setting(0.98, f"{_ROBERTA}: Adam beta2"),
            "adam_eps": Setting(1e-6, f"{_ROBERTA}: Adam epsilon"),
            "weight_decay": Setting(0.01, f"{_ROBERTA}: weight decay"),
            "schedule": Setting("linear", f"{_ROBERTA}: learning rate decay linear"),
            "warmup_steps": Setting(24000, f"{_ROBERTA}: warmup steps (large: 30k)"),
            "seq_len": Setting(512, f"{_ROBERTA} (§4.2 FULL-SENTENCES, at most 512 tokens)"),
            "global_batch": Setting(8000, f"{_ROBERTA}: batch size 8k"),
            "clip_grad_norm": Setting(0.0, f"{_ROBERTA}: gradient clipping 0.0"),
            "dropout": Setting(0.1, f"{_ROBERTA}: dropout and attention dropout 0.1"),
        },
    ),
    "cramming": Recipe(
        name="cramming",
        summary="Cramming (2023): the best BERT one GPU trains in a day; 25% masking, triangular lr, no dropout; pair with --time-budget",
        citation="Geiping & Goldstein 2023 (arXiv:2212.14034)",
        architecture="bert",
        settings={
            "mask_prob": Setting(0.25, f"{_CRAMMING}: objective.mlm_probability"),
            "mask_replace_prob": Setting(0.8, f"{_CRAMMING}: use_80_20_rule"),
            "random_replace_prob": Setting(0.1, f"{_CRAMMING}: use_80_20_rule"),
            "lr": Setting(1e-3, f"{_CRAMMING}: optim.lr"),
            "beta1": Setting(0.9, f"{_CRAMMING_ADAM}: betas"),
            "beta2": Setting(0.98, f"{_CRAMMING_ADAM}: betas"),
            "adam_eps": Setting(1e-12, f"{_CRAMMING_ADAM}: eps"),
            "weight_decay": Setting(0.01, f"{_CRAMMING}: optim.weight_decay"),
            "schedule": Setting("linear", f"{_CRAMMING}: budget-triangle2, linear up to 75% of the budget, then linear to 0"),
            "warmup_fraction": Setting(0.75, f"{_CRAMMING}: budget-triangle2 (falloff 0.25)"),
            "warmup_start_ratio": Setting(0.25, f"{_CRAMMING}: budget-triangle2 (base_percentage 0.25)"),
            "seq_len": Setting(128, "Geiping & Goldstein 2023 §4.3: sequences of 128 tokens"),
            "global_batch": Setting(8192, f"{_CRAMMING}: batch_size"),
            "clip_grad_norm": Setting(0.5, f"{_CRAMMING}: gradient_clipping"),
            "dropout": Setting(0.0, f"{_CRAMMING}: pretrain_in_train_mode False (no dropout while pretraining)"),
        },
        not_reproduced=(
            "the batch-size ramp to 8,192 over 60% of the budget",
            "the crammed-BERT architecture changes (no biases in linear layers, pre-norm, gated GELU)",
        ),
    ),
    "neobert": Recipe(
        name="neobert",
        summary="NeoBERT (2025): 20% masking all with [MASK], AdamW (0.9, 0.95) with weight decay 0.1, cosine to 10%, 1,024-token windows",
        citation=_NEOBERT_PAPER,
        architecture="modernbert",
        settings={
            "mask_prob": Setting(0.20, f"{_NEOBERT_CONF}datacollator/mlm_20.yaml: mlm_probability 0.20"),
            "mask_replace_prob": Setting(1.0, f"{_NEOBERT_CONF}datacollator/mlm_20.yaml: mask_all true"),
            "random_replace_prob": Setting(0.0, f"{_NEOBERT_CONF}datacollator/mlm_20.yaml: mask_all true"),
            "lr": Setting(6e-4, f"{_NEOBERT_PAPER}: peak learning rate"),
            "beta1": Setting(0.9, f"{_NEOBERT_CONF}optimizer/adamw.yaml: betas"),
            "beta2": Setting(0.95, f"{_NEOBERT_CONF}optimizer/adamw.yaml: betas"),
            "adam_eps": Setting(1e-8, f"{_NEOBERT_CONF}optimizer/adamw.yaml: eps"),
            "weight_decay": Setting(0.1, f"{_NEOBERT_PAPER}: weight decay"),
            "schedule": Setting("cosine", f"{_NEOBERT_CONF}scheduler/cosine_decay.yaml: decay cosine"),
            "min_lr_ratio": Setting(0.1, f"{_NEOBERT_PAPER}: cosine decay to 10% of the peak"),
            "warmup_steps": Setting(2000, f"{_NEOBERT_CONF}scheduler/cosine_decay.yaml: warmup_steps"),
            "seq_len": Setting(1024, f"{_NEOBERT_PAPER}: first stage at 1,024 tokens"),
            "global_batch": Setting(2048, f"{_NEOBERT_PAPER}: 2M tokens a step = 2,048 x 1,024"),
            "clip_grad_norm": Setting(1.0, f"{_NEOBERT_CONF}trainer/mlm.yaml: gradient_clipping 1"),
            "dropout": Setting(0.0, f"{_NEOBERT_PAPER}: NeoBERT has no dropout"),
        },
        not_reproduced=(
            "NeoBERT's own architecture (RMSNorm, SwiGLU, no local attention): transformers has no NeoBERT class, so ModernBERT's is the default",
        ),
        next_phases=("context extension: --model RUN --seq-len 4096 (50k steps)",),
    ),
    "mmbert": Recipe(
        name="mmbert",
        summary="mmBERT (2025): ModernBERT's recipe for many languages, 30% masking, stores sampled by size^0.7; later phases lower both",
        citation=_MMBERT,
        architecture="modernbert",
        settings={
            "mask_prob": Setting(0.30, f"{_MMBERT}: pre-training phase masks 30% (15% mid-training, 5% decay)"),
            "lr": Setting(8e-4, f"{_MMBERT}: ModernBERT's peak learning rate"),
            "beta1": Setting(0.9, f"as ModernBERT ({_MODERNBERT_YAML}), which mmBERT's recipe follows"),
            "beta2": Setting(0.98, f"as ModernBERT ({_MODERNBERT_YAML})"),
            "adam_eps": Setting(1e-6, f"as ModernBERT ({_MODERNBERT_YAML})"),
            "weight_decay": Setting(1e-5, f"as ModernBERT ({_MODERNBERT_YAML})"),
            "schedule": Setting("wsd", f"{_MMBERT}: trapezoidal (warmup, stable, decay)"),
            "warmup_steps": Setting(636, f"as ModernBERT ({_MODERNBERT_YAML}: 3B tokens)"),
            "decay_fraction": Setting(0.033, f"{_MMBERT}: the decay phase is 100B of 3T tokens"),
            "seq_len": Setting(1024, f"{_MMBERT}: 1,024 tokens before the 8,192-token mid-training"),
            "global_batch": Setting(4608, f"as ModernBERT ({_MODERNBERT_YAML})"),
            "clip_grad_norm": Setting(0.0, f"as ModernBERT ({_MODERNBERT_YAML})"),
        },
        several_stores={
            "mix_temperature": Setting(round(1 / 0.7, 4), f"{_MMBERT}: languages sampled with inverse temperature 0.7 (p ~ size^0.7)"),
        },
        not_reproduced=("StableAdamW and the batch-size warmup, as for ModernBERT",),
        next_phases=(
            "mid-training: --model RUN --seq-len 8192 --rope-theta 160000 --mask-prob 0.15 --mix-temperature 2 (inverse temperature 0.5)",
            "decay: --model RUN --mask-prob 0.05 --mix-temperature 3.333 (inverse temperature 0.3), with the low-resource stores added",
        ),
    ),
}


def recipe_names() -> str:
    return ", ".join(RECIPES)


def recipe_values(name: str, several_stores: bool) -> dict[str, Any]:
    """The TrainConfig values a recipe sets (KeyError for an unknown name)."""
    recipe = RECIPES[name]
    settings = {**recipe.settings, **(recipe.several_stores if several_stores else {})}
    return {key: setting.value for key, setting in settings.items()}


def describe(name: str) -> str:
    """A recipe as text: its values and sources, what it leaves out, and its later phases."""
    recipe = RECIPES[name]
    lines = [f"{recipe.name}: {recipe.summary} [{recipe.citation}]", f"  architecture: {recipe.architecture}"]
    for key, setting in {**recipe.settings, **recipe.several_stores}.items():
        lines.append(f"  --{key.replace('_', '-')} {setting.value}    ({setting.source})")
    lines += [f"  not reproduced: {item}" for item in recipe.not_reproduced]
    lines += [f"  then {phase}" for phase in recipe.next_phases]
    return "\n".join(lines)


def not_reproduced_text() -> str:
    """What each recipe cannot reproduce, for `unmask train --help`."""
    lines = ["What each --recipe cannot reproduce (the rest of its settings are the paper's):"]
    for recipe in RECIPES.values():
        if recipe.not_reproduced:
            lines.append(f"  {recipe.name}: {'; '.join(recipe.not_reproduced)}.")
    return "\n".join(lines)


# A setting the user gives -> the recipe setting that would otherwise override it.
TAKES_OVER = {"warmup_fraction": "warmup_steps", "grad_accum": "global_batch"}


def with_recipe(values: dict[str, Any], given: set[str], from_file: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`values` (every setting of a training run) with the recipe `values["recipe"]` in place of
    the defaults, and a note for each recipe value that is not used. `given` names the settings
    the caller chose (flags, keyword arguments), `from_file` the values of a --config file: both
    win over the recipe's. The CLI and the Python API resolve a recipe with this one function."""
    recipe = values["recipe"]
    published = recipe_values(recipe, several_stores=len(values.get("data") or []) > 1)
    notes = []
    for chosen, overridden in TAKES_OVER.items():  # --warmup-fraction given: the recipe's warmup steps must not win
        if overridden in published and (chosen in given or chosen in from_file) and overridden not in from_file:
            notes.append(
                f"note: --recipe {recipe}: {flag(chosen)} given, so the recipe's {flag(overridden)} {published[overridden]} is not used"
            )
            published[overridden] = None
    chosen = {**from_file, **{name: values[name] for name in published if name in given}}
    for name, value in published.items():
        if name in chosen and chosen[name] != value:
            notes.append(f"note: --recipe {recipe}: {flag(name)} {chosen[name]} used instead of the recipe's {value}")
    if RECIPES[recipe].not_reproduced:
        notes.append(f"note: --recipe {recipe} does not reproduce: {'; '.join(RECIPES[recipe].not_reproduced)}")
    return {**values, **published, **{k: v for k, v in chosen.items() if k in published}}, notes
