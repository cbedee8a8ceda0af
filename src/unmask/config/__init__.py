"""Typed settings for every command, validated on construction and saved as YAML.

- `base`: validation helpers that name the flag, YAML in and out (`UnmaskError` re-exported).
- `pipeline`: `unmask prepare` and `unmask tokenizer`; `sections` and `training`: `unmask train`, in sections.
- `use`: the commands that use a model (fill, inspect, eval, score, embed, compare, plot).
- `downstream`: finetune, probe and downstream, and the records of a suite file.

Each field's docstring is its `--help` text; the CLI is generated from these classes.
"""

from unmask.config.base import (
    UnmaskError,
    check_masking_probabilities,
    check_setting,
    flag,
    from_dict,
    load_partial_yaml,
    load_yaml,
    save_yaml,
    to_dict,
)
from unmask.config.downstream import FINETUNE_RESUMABLE, DownstreamConfig, FinetuneConfig, ProbeConfig, Suite, SuiteTask, load_suite
from unmask.config.pipeline import (
    ARCHITECTURE_NAMES,
    MAX_CONTEXT,
    PRESETS,
    PrepareConfig,
    SourceOptions,
    TokenizerConfig,
    parse_preset,
    parse_sources,
    parse_weights,
)
from unmask.config.training import RESUMABLE_CHANGES, TrainConfig, length_changes, refused_resume_changes
from unmask.config.use import (
    CompareConfig,
    EmbedConfig,
    EvalConfig,
    ExportConfig,
    FillConfig,
    InspectConfig,
    PairsConfig,
    PlotConfig,
    ScoreConfig,
    ServeConfig,
)

__all__ = [
    "UnmaskError", "check_masking_probabilities", "check_setting", "flag", "from_dict", "load_partial_yaml", "load_yaml", "save_yaml", "to_dict",
    "ARCHITECTURE_NAMES", "MAX_CONTEXT", "PRESETS", "RESUMABLE_CHANGES", "length_changes", "parse_preset", "parse_sources", "parse_weights", "PrepareConfig", "SourceOptions", "TokenizerConfig", "TrainConfig", "refused_resume_changes",
    "FINETUNE_RESUMABLE", "DownstreamConfig", "FinetuneConfig", "ProbeConfig", "Suite", "SuiteTask", "load_suite",
    "CompareConfig", "EmbedConfig", "EvalConfig", "ExportConfig", "FillConfig", "InspectConfig", "PairsConfig", "PlotConfig", "ScoreConfig", "ServeConfig",
]  # fmt: skip
