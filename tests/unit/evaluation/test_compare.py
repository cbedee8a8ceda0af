"""The base-vs-trained report and a run's curves."""

import builtins
import json
import math

import pytest
from conftest import quiet

from unmask.config import UnmaskError
from unmask.evaluation.charts import plot_run
from unmask.evaluation.compare import compare, metrics_table
from unmask.evaluation.heldout import EVAL_MASK_PROB, EVAL_SEED, MlmMetrics
from unmask.tables import text_table


def test_compare_writes_a_report_and_the_same_model_twice_changes_nothing(tiny_model_dir, store_dir, tmp_path):
    report = compare(str(tiny_model_dir), str(tiny_model_dir), [str(store_dir)], tmp_path / "same", seq_len=32, echo=quiet, device="cpu")
    assert report["base_metrics"] == report["trained_metrics"] and report["disagreements"] == []
    for name in ("report.md", "report.json", "chart.png"):
        assert (tmp_path / "same" / name).stat().st_size > 0
    assert (tmp_path / "same" / "chart.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "same" / "report.json").read_text())["windows"] > 0
    markdown = (tmp_path / "same" / "report.md").read_text()
    assert f"({EVAL_MASK_PROB:.0%}, seed {EVAL_SEED})" in markdown and "![metrics](chart.png)" in markdown


def test_compare_without_matplotlib_still_writes_the_report_and_says_why_there_is_no_chart(
    tiny_model_dir, store_dir, tmp_path, monkeypatch
):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    report = compare(str(tiny_model_dir), str(tiny_model_dir), [str(store_dir)], tmp_path / "r", seq_len=32, echo=quiet, device="cpu")
    assert (tmp_path / "r" / "report.json").is_file() and (tmp_path / "r" / "report.md").is_file()
    assert not (tmp_path / "r" / "chart.png").exists() and "chart.png" not in (tmp_path / "r" / "report.md").read_text()
    assert report["chart"] is None and "unmask[report]" in report["no_chart"]


def test_metrics_table_shows_changes_and_no_change_for_counts():
    before = MlmMetrics(loss=4.0, perplexity=math.exp(4.0), accuracy=0.10, masked_tokens=100, top5_accuracy=0.2)
    after = MlmMetrics(loss=3.5, perplexity=math.exp(3.5), accuracy=0.25, masked_tokens=100, top5_accuracy=0.4)
    rows = {row[0]: row for row in metrics_table(["base", "trained"], [before, after])}
    assert rows["loss"][1:] == ["4.0000", "3.5000", "-0.5000"]
    assert rows["top-1 accuracy"][1:] == ["10.00%", "25.00%", "+15.00%"]
    assert rows["masked tokens"][-1] == "" and rows["whole-word accuracy"][1] == "n/a"
    table = text_table([["a", "bb"], ["ccc", "d"]]).splitlines()
    assert table == ["a    bb", "ccc  d"]


def test_plot_draws_a_png_and_names_a_bad_metrics_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records = [
        {"step": 1, "loss": 5.0},
        {"step": 2, "loss": 4.0},
        {"step": 2, "eval_loss": 4.2, "eval_accuracy": 0.1, "eval_top5_accuracy": 0.3},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert plot_run(run).read_bytes()[:4] == b"\x89PNG"
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\nnot json\n')
    with pytest.raises(UnmaskError, match=r"metrics.jsonl:2: not a JSON line"):
        plot_run(run)
    with pytest.raises(UnmaskError, match="no metrics.jsonl"):
        plot_run(tmp_path)


def test_a_base_with_a_fresh_head_is_said_to_be_a_random_heads_numbers(tiny_model_dir, store_dir, tmp_path):
    """The starter has no MLM head: 0% against it must come with the reason."""
    from conftest import tiny_bert
    from transformers import AutoTokenizer, BertModel

    headless = tmp_path / "encoder-only"
    BertModel(tiny_bert(len(AutoTokenizer.from_pretrained(tiny_model_dir))).config).save_pretrained(headless)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(headless)
    lines = []
    report = compare(str(headless), str(tiny_model_dir), [str(store_dir)], tmp_path / "r", seq_len=32, echo=lines.append, device="cpu")
    assert len(report["notes"]) == 1 and report["notes"][0].startswith("base (") and "no trained MLM head" in report["notes"][0]
    assert any(note.startswith("base (") for note in report["notes"])
    assert "Note: base (" in (tmp_path / "r" / "report.md").read_text()


def test_the_accuracy_axis_keeps_the_decimals_its_ticks_need(tmp_path, monkeypatch):
    from unmask.evaluation import charts

    assert [charts.percent_label(v) for v in (0.375, 0.4, 0.0, 0.1234, 1.0)] == ["37.5%", "40%", "0%", "12.34%", "100%"]
    run = tmp_path / "run"
    run.mkdir()
    records = [{"step": 1, "loss": 5.0}, *({"step": s, "eval_loss": 4.0, "eval_accuracy": a} for s, a in ((1, 0.37), (2, 0.38)))]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    drawn = []
    real = charts.percent_label
    monkeypatch.setattr(charts, "percent_label", lambda v: drawn.append(real(v)) or drawn[-1])
    plot_run(run)
    assert any("." in label for label in drawn), f"ticks between 37% and 38% need a decimal: {drawn}"


def test_compare_writes_into_the_trained_runs_folder_by_default_and_asks_otherwise(
    served, tiny_model_dir, store_dir, tmp_path, monkeypatch
):
    import shutil

    import unmask

    run = tmp_path / "run"
    shutil.copytree(served / "finished", run)
    monkeypatch.chdir(tmp_path)
    report = unmask.compare(base=str(tiny_model_dir), trained=str(run), data=[str(store_dir)], seq_len=32, max_batches=1, device="cpu")
    assert report["folder"] == str(run / "compare") and (run / "compare" / "report.md").is_file()
    assert not (tmp_path / "compare").exists(), "nothing lands in the working directory"
    with pytest.raises(UnmaskError, match=r"--out: .* is not a run folder to write the report into"):
        unmask.compare(base=str(tiny_model_dir), trained=str(tiny_model_dir), data=[str(store_dir)], seq_len=32, device="cpu")
