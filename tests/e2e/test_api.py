"""The Python API (`import unmask`): each command's function, driven both ways on a tiny
model, gives what the command gives, with the same settings, checks and messages."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from conftest import REPO

import unmask
from unmask.cli.main import main, parse
from unmask.config import TrainConfig
from unmask.errors import UnmaskError

pytestmark = pytest.mark.slow

README = REPO / "README.md"


def cli_json(capsys, argv: list[str]):
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    return [json.loads(line) for line in out.splitlines() if line.strip()] if "\n{" in out or out.startswith('{"') else json.loads(out)


def test_prepare_both_ways_writes_the_same_store(corpus_dir, tokenizer_dir, tmp_path, capsys):
    store = unmask.prepare(sources=[str(corpus_dir)], out=str(tmp_path / "api"), tokenizer=str(tokenizer_dir), val_fraction=0.1)
    assert (
        main(["prepare", str(corpus_dir), "--out", str(tmp_path / "cli"), "--tokenizer", str(tokenizer_dir), "--val-fraction", "0.1"]) == 0
    )
    capsys.readouterr()
    assert store.path == tmp_path / "api" and store.meta["splits"]["train"]["tokens"] > 0
    for name in sorted(p.name for p in (tmp_path / "cli").iterdir() if p.suffix in (".bin", ".npy")):
        assert (tmp_path / "api" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name


TRAIN_FLAGS = ["--seq-len", "32", "--batch-size", "4", "--max-steps", "4", "--lr", "1e-3", "--eval-every", "2", "--log-every", "1",
               "--checkpoint-every", "2", "--warmup-steps", "1", "--precision", "fp32", "--progress", "none"]  # fmt: skip


def test_train_both_ways_gives_equal_runs_and_config_files(store_dir, tiny_model_dir, tmp_path, capsys):
    settings = dict(seq_len=32, batch_size=4, max_steps=4, lr=1e-3, eval_every=2, log_every=1, checkpoint_every=2, warmup_steps=1)
    run = unmask.train(
        model=str(tiny_model_dir), data=str(store_dir), out=str(tmp_path / "api"), precision="fp32", progress="none", **settings
    )
    assert main(["train", "--model", str(tiny_model_dir), "--data", str(store_dir), "--out", str(tmp_path / "cli"), *TRAIN_FLAGS]) == 0
    capsys.readouterr()
    cli_summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    evaluated = {k: v for k, v in run.summary.items() if k.startswith("eval_")}
    assert evaluated and evaluated == {k: v for k, v in cli_summary.items() if k.startswith("eval_")}
    api_config = yaml.safe_load((tmp_path / "api" / "config.yaml").read_text())
    cli_config = yaml.safe_load((tmp_path / "cli" / "config.yaml").read_text())
    assert {**api_config, "out": None} == {**cli_config, "out": None}
    assert run.model.joinpath("config.json").is_file()
    assert [m["step"] for m in run.metrics if "loss" in m][:4] == [1, 2, 3, 4]


def test_a_recipe_resolves_the_same_from_python_as_from_the_command_line(store_dir, tmp_path):
    argv = ["train", "--from-scratch", "modernbert-tiny", "--recipe", "modernbert", "--data", str(store_dir), "--out", str(tmp_path / "r"),
            "--global-batch", "8", "--lr", "2e-4"]  # fmt: skip
    _, from_cli = parse(argv, echo=lambda _: None)
    notes: list[str] = []
    from_kwargs = unmask.api.train_settings(
        from_scratch="modernbert-tiny",
        recipe="modernbert",
        data=[str(store_dir)],
        out=str(tmp_path / "r"),
        global_batch=8,
        lr=2e-4,
        echo=notes.append,
    )
    from_object = unmask.api.train_settings(
        TrainConfig(
            from_scratch="modernbert-tiny", recipe="modernbert", data=[str(store_dir)], out=str(tmp_path / "r"), global_batch=8, lr=2e-4
        )
    )
    assert from_kwargs == from_cli == from_object
    assert from_cli.lr == 2e-4 and from_cli.warmup_steps != TrainConfig(data=["x"], out="y", model="m").warmup_steps  # the recipe's warmup
    assert any("--lr 0.0002 used instead of the recipe's" in note for note in notes)


def test_fill_eval_score_and_embed_equal_the_commands(store_dir, tiny_model_dir, capsys):
    model = str(tiny_model_dir)
    texts = ["the [MASK] sat on the mat .", "a [MASK] of [MASK] ."]
    filled = unmask.fill(model, texts, top_k=3)
    from_cli = cli_json(capsys, ["fill", model, *texts, "--top-k", "3", "--json"])
    assert [json.loads(json.dumps(r.__dict__, default=lambda o: o.__dict__)) for r in filled] == from_cli

    evaluation = unmask.evaluate(model, data=[str(store_dir)], seq_len=32, batch_size=4)
    assert evaluation.as_dict() == cli_json(
        capsys, ["eval", model, "--data", str(store_dir), "--seq-len", "32", "--batch-size", "4", "--json"]
    )

    scored = unmask.score(model, "the cat sat on the mat .")
    assert [s.__dict__ for s in scored] == cli_json(capsys, ["score", model, "the cat sat on the mat .", "--json"])

    vectors = unmask.embed(model, ["the cat", "a dog"]).vectors
    assert vectors.shape[0] == 2 and vectors.dtype.name == "float32"


def test_bad_input_raises_the_message_the_command_prints(tiny_model_dir, capsys):
    with pytest.raises(unmask.UnmaskError) as raised:
        unmask.fill(str(tiny_model_dir), ["a [MASK] ."], top_k=0)
    assert main(["fill", str(tiny_model_dir), "a [MASK] .", "--top-k", "0"]) == 1
    assert str(raised.value) in capsys.readouterr().err
    with pytest.raises(unmask.UnmaskError, match="unknown setting 'topk'.*did you mean 'top_k'"):
        unmask.fill(str(tiny_model_dir), ["a [MASK] ."], topk=3)


def test_a_library_call_prints_nothing(tiny_model_dir, capsys):
    unmask.fill(str(tiny_model_dir), ["the [MASK] ."])
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_the_readme_python_example_runs(tmp_path, monkeypatch, tiny_model_dir, corpus_dir, tokenizer_dir):
    """README's "Python" section, executed with the tiny model standing in for the starter."""
    code = re.search(r"## Python\n.*?```python\n(.*?)```", README.read_text(), re.DOTALL).group(1)
    code = code.replace('"minilm-l6"', repr(str(tiny_model_dir))).replace('"sample:pydocs"', repr(str(corpus_dir)))
    code = code.replace("max_steps=100", "max_steps=3, seq_len=32, batch_size=4, eval_every=3, checkpoint_every=3")
    monkeypatch.chdir(tmp_path)
    unmask.prepare(str(corpus_dir), out="runs/pydocs", tokenizer=str(tiny_model_dir))  # what the quick start leaves
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "runs" / "demo" / "model" / "config.json").is_file()
    assert namespace["run"].summary["eval_masked_tokens"] > 0


def test_the_other_commands_both_ways(tiny_model_dir, tokenizer_dir, store_dir, corpus_dir, tmp_path, capsys):
    """tokenizer, inspect, pairs, compare, probe, finetune and export: the API's result is what the command writes or prints."""
    from conftest import classification_records, write_jsonl

    model = str(tiny_model_dir)
    learned = unmask.tokenizer(sources=[str(corpus_dir)], out=str(tmp_path / "tok-api"), vocab_size=200)
    assert main(["tokenizer", str(corpus_dir), "--out", str(tmp_path / "tok-cli"), "--vocab-size", "200"]) == 0
    # The Rust trainer breaks ties between equally frequent pieces in a per-process hash order,
    # so two runs of either kind may differ in a few tokens: compare what was asked and learned.
    printed = capsys.readouterr().out
    assert (
        f"{learned.summary['kind']}, {learned.summary['vocab_size']:,} tokens, learned from {learned.summary['documents']:,} documents"
        in printed
    )

    rows = unmask.inspect("the cat sat on the mat .", model=model, seed=3)
    assert [r.__dict__ for r in rows] == cli_json(
        capsys, ["inspect", "the cat sat on the mat .", "--model", model, "--seed", "3", "--json"]
    )

    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text(json.dumps({"sentence_good": "the cat sat .", "sentence_bad": "the cat sat sat ."}) + "\n")
    report = unmask.pairs(model=model, pairs=str(pairs_file), out=str(tmp_path / "pairs-api.json"))
    assert main(["pairs", model, str(pairs_file), "--out", str(tmp_path / "pairs-cli.json")]) == 0
    capsys.readouterr()
    assert report == json.loads((tmp_path / "pairs-cli.json").read_text()) == json.loads((tmp_path / "pairs-api.json").read_text())

    compared = unmask.compare(base=model, trained=model, data=[str(store_dir)], out=str(tmp_path / "cmp-api"), seq_len=32)
    assert main(["compare", model, model, "--data", str(store_dir), "--out", str(tmp_path / "cmp-cli"), "--seq-len", "32"]) == 0
    capsys.readouterr()
    on_disk = json.loads((tmp_path / "cmp-cli" / "report.json").read_text())
    assert compared["trained_metrics"] == on_disk["trained_metrics"] and compared["table"] == on_disk["table"]

    train_file = write_jsonl(tmp_path / "t.jsonl", classification_records(40))
    eval_file = write_jsonl(tmp_path / "e.jsonl", classification_records(15, 9))
    probed = unmask.probe(model=model, train=train_file, eval=eval_file)
    assert probed["metrics"] == cli_json(capsys, ["probe", model, "--train", train_file, "--eval", eval_file, "--json"])["metrics"]

    tuned = unmask.finetune(model=model, train=train_file, eval=eval_file, out=str(tmp_path / "ft-api"), epochs=1, progress="none")
    assert (
        main(
            [
                "finetune",
                model,
                "--train",
                train_file,
                "--eval",
                eval_file,
                "--out",
                str(tmp_path / "ft-cli"),
                "--epochs",
                "1",
                "--progress",
                "none",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert tuned["metrics"] == json.loads((tmp_path / "ft-cli" / "summary.json").read_text())["metrics"]
    api_config = yaml.safe_load((tmp_path / "ft-api" / "config.yaml").read_text())
    assert {**api_config, "out": None} == {**yaml.safe_load((tmp_path / "ft-cli" / "config.yaml").read_text()), "out": None}


def test_one_store_given_as_a_string_counts_as_one_store_for_a_recipe(store_dir, tmp_path):
    """mmBERT's recipe sets a mixing temperature only for several stores: `data="STORE"` is one."""
    as_string = unmask.api.train_settings(from_scratch="tiny", recipe="mmbert", data=str(store_dir), out=str(tmp_path / "r"))
    as_list = unmask.api.train_settings(from_scratch="tiny", recipe="mmbert", data=[str(store_dir)], out=str(tmp_path / "r"))
    assert as_string == as_list and as_string.data == [str(store_dir)] and as_string.mix_temperature is None


def test_results_show_themselves_in_a_notebook(served, tiny_model_dir, store_dir, tmp_path, tokenizer_dir):
    """What fill, inspect, evaluate, train, compare and finetune return has an HTML view
    (`_repr_html_`), with the numbers it holds."""
    import json

    from conftest import classification_records, write_jsonl

    fills = unmask.fill(str(tiny_model_dir), ["the cat [MASK] the door ."], top_k=3)
    html = fills._repr_html_()
    assert html.count("<tr>") == 1 + 3 and f"{fills[0].masks[0].candidates[0].score:.1%}" in html
    assert "no trained MLM head" not in html
    from conftest import tiny_bert
    from transformers import AutoTokenizer, BertModel

    headless = tmp_path / "encoder-only"
    BertModel(tiny_bert(len(AutoTokenizer.from_pretrained(tokenizer_dir))).config).save_pretrained(headless)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(headless)
    random_head = unmask.fill(str(headless), ["the cat [MASK] the door ."], top_k=3)._repr_html_()
    assert random_head.startswith(f"<p><b>{headless} has no trained MLM head</b>"), "said before the first table"
    draw = unmask.inspect("the cat sees the door .", model=str(tokenizer_dir), seed=1, mask_prob=0.5)
    html = draw._repr_html_()
    picked = sum(r.picked for r in draw)
    assert f"picked {picked} of " in html and "became" in html and html.count("<tr>") == 1 + len(draw)
    evaluation = unmask.evaluate(str(tiny_model_dir), data=[str(store_dir)], seq_len=32, max_batches=1, device="cpu")
    assert f"{evaluation.metrics.loss:.4f}" in evaluation._repr_html_()
    run = unmask.api.TrainedRun(served / "finished", json.loads((served / "finished" / "summary.json").read_text()))
    html = run._repr_html_()
    assert html.startswith("<svg") and html.count("<polyline") == 2 and f"{run.summary['eval_accuracy']:.2%}" in html
    comparison = unmask.compare(
        base=str(tiny_model_dir),
        trained=str(tiny_model_dir),
        data=[str(store_dir)],
        out=str(tmp_path / "c"),
        seq_len=32,
        max_batches=1,
        device="cpu",
    )
    assert "<table>" in comparison._repr_html_() and comparison["base"] == str(tiny_model_dir), "still the report's dict"
    data = write_jsonl(tmp_path / "t.jsonl", classification_records(16))
    tuned = unmask.finetune(
        model=str(tiny_model_dir), train=data, eval=data, out=str(tmp_path / "ft"), epochs=1, device="cpu", progress="none"
    )
    assert "accuracy" in tuned._repr_html_() and isinstance(tuned, dict)


def test_python_values_are_checked_as_the_command_line_checks_them(store_dir, tiny_model_dir, tmp_path):
    # One resolver (`config.resolve`) under both: a string where a list goes is one item, a
    # number given as text is read, a float where a whole number goes is refused.
    model, store = str(tiny_model_dir), str(store_dir)
    one_store = unmask.evaluate(model, data=store, seq_len=32, batch_size=4, max_batches=1)
    assert one_store.data == [store], "not a list of its characters"
    assert len(unmask.fill(model, "the [MASK] sat .", top_k="3")[0].masks[0].candidates) == 3
    with pytest.raises(UnmaskError, match=r"--top-k: '2.5' is not a whole number"):
        unmask.fill(model, "the [MASK] sat .", top_k=2.5)
    with pytest.raises(UnmaskError, match=r"--max-steps: '2.5' is not a whole number"):
        unmask.train(model=model, data=store, out=str(tmp_path / "r"), max_steps=2.5)
    assert not (tmp_path / "r").exists()
    with pytest.raises(UnmaskError, match=r"--precision: 'bf15' is not one of"):
        unmask.fill(model, "the [MASK] sat .", precision="bf15")
    with pytest.raises(UnmaskError, match=r"unknown setting 'top_kk' for FillConfig; did you mean 'top_k'\?"):
        unmask.fill(model, "the [MASK] sat .", top_kk=3)


def test_a_commands_positionals_are_its_functions(corpus_dir, tokenizer_dir, tmp_path):
    store = unmask.prepare(str(corpus_dir), out=str(tmp_path / "s"), tokenizer=str(tokenizer_dir))
    assert store.meta["splits"]["train"]["documents"] > 0
    as_keyword = unmask.prepare(sources=str(corpus_dir), out=str(tmp_path / "k"), tokenizer=str(tokenizer_dir))
    assert as_keyword.meta["splits"] == store.meta["splits"], "one source, not one a character"
    with pytest.raises(UnmaskError, match=r"2 positional arguments given; PrepareConfig takes sources"):
        unmask.prepare(str(corpus_dir), "extra", out=str(tmp_path / "x"))


def test_a_recipe_is_resolved_once_and_a_value_named_in_the_typed_settings_wins_even_at_the_default(store_dir, tmp_path, capsys):
    default_lr = TrainConfig(data=["x"], out="y", model="m").lr
    named = TrainConfig(from_scratch="modernbert-tiny", recipe="modernbert", data=[str(store_dir)], out=str(tmp_path / "r"), lr=default_lr)
    resolved = unmask.api.train_settings(named)
    assert resolved.lr == default_lr, "named in the constructor: chosen, though equal to the default"
    unnamed = TrainConfig(from_scratch="modernbert-tiny", recipe="modernbert", data=[str(store_dir)], out=str(tmp_path / "r"))
    assert unmask.api.train_settings(unnamed).lr != default_lr, "not named: the recipe's"
    notes: list[str] = []
    argv = ["train", "--from-scratch", "modernbert-tiny", "--recipe", "modernbert", "--data", str(store_dir), "--out", str(tmp_path / "r")]
    _, from_cli = parse(argv, echo=notes.append)
    again: list[str] = []
    assert unmask.api.train_settings(from_cli, echo=again.append) is from_cli and again == [], "the API takes it as resolved"
    assert notes, "the recipe's notes are printed, once"


def test_messages_name_keyword_arguments_to_a_library_caller_and_flags_to_the_command_line(corpus_dir, tokenizer_dir, tmp_path, capsys):
    out = str(tmp_path / "store")
    unmask.prepare(str(corpus_dir), out=out, tokenizer=str(tokenizer_dir))
    with pytest.raises(UnmaskError, match=r"out='.*store': already exists \(pass overwrite=True to replace it\)"):
        unmask.prepare(str(corpus_dir), out=out, tokenizer=str(tokenizer_dir))
    assert main(["prepare", str(corpus_dir), "--out", out, "--tokenizer", str(tokenizer_dir)]) == 1
    assert "--out " + out + ": already exists (pass --overwrite to replace it)" in capsys.readouterr().err


def test_a_switched_off_flag_and_an_assigned_field_count_as_chosen(store_dir, tmp_path):
    argv = ["train", "--from-scratch", "tiny", "--data", str(store_dir), "--out", str(tmp_path / "r")]
    _, settings = parse([*argv, "--no-attention-across-docs", "--no-compile"])
    assert settings.attention_across_docs is False and settings.compile is False, "--no-X is given, not ignored"
    config = TrainConfig(from_scratch="modernbert-tiny", recipe="modernbert", data=[str(store_dir)], out=str(tmp_path / "r"))
    config.lr = 1e-5
    assert unmask.api.train_settings(config).lr == 1e-5, "assigned after construction: chosen, the recipe stays off it"
    resolved = unmask.api.train_settings(TrainConfig(model="m", data=[str(store_dir)], out=str(tmp_path / "r")))
    resolved.max_steps = 2.5
    with pytest.raises(UnmaskError, match=r"--max-steps: '2.5' is not a whole number"):
        unmask.api.train_settings(resolved)


def test_numbers_the_command_line_would_read_are_read(store_dir, tmp_path):
    import numpy as np

    settings = unmask.api.train_settings(model="m", data=str(store_dir), out=str(tmp_path / "r"), peak_tflops=400, max_steps=np.int64(5))
    assert settings.peak_tflops == "400" and settings.max_steps == 5 and type(settings.max_steps) is int


def test_train_returns_a_run_and_plan_returns_the_plan_never_one_for_the_other(store_dir, tiny_model_dir, tmp_path):
    settings = dict(model=str(tiny_model_dir), data=str(store_dir), out=str(tmp_path / "r"), seq_len=32, batch_size=4, max_steps=6)
    planned = unmask.plan(**settings)
    assert isinstance(planned, dict) and planned["tokens_per_s"] > 0 and not (tmp_path / "r").exists(), "a plan writes no run"
    with pytest.raises(UnmaskError, match=r"plan: asks for the plan, which `unmask.plan` returns"):
        unmask.train(plan=True, **settings)
    assert not (tmp_path / "r").exists()
