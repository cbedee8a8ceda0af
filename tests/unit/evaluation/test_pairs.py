"""Minimal-pair accuracy: scores equal `unmask score`, a tie is wrong, groups and models as columns."""

import json

import pytest
from conftest import quiet, tiny_bert

from unmask.cli.main import main
from unmask.config import PairsConfig, UnmaskError
from unmask.evaluation.pairs import score_pairs
from unmask.infer import Scorer

PAIRS = [
    {"sentence_good": "the cat sees the door.", "sentence_bad": "the cat see the door.", "UID": "agreement"},
    {"sentence_good": "a dog reads a book.", "sentence_bad": "a dog read a book.", "UID": "agreement"},
    {"sentence_good": "the teacher writes a letter.", "sentence_bad": "the teacher writes letter a.", "UID": "order"},
    {"sentence_good": "our team builds a new function.", "sentence_bad": "our team builds a new function.", "UID": "order"},  # a tie
]


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return path


def test_pair_scores_equal_unmask_score_and_a_tie_is_wrong(tiny_model_dir, pairs_file):
    for scoring in ("pll", "pll-word-l2r"):
        [result] = score_pairs(PairsConfig(model=str(tiny_model_dir), pairs=str(pairs_file), scoring=scoring, device="cpu"), echo=quiet)
        scorer = Scorer(str(tiny_model_dir), device="cpu", echo=quiet)
        for pair, (good, bad) in zip(PAIRS, result.scores):
            [g, b] = scorer.score([pair["sentence_good"], pair["sentence_bad"]])
            assert (good, bad) == ((g.pll, b.pll) if scoring == "pll" else (g.pll_word_l2r, b.pll_word_l2r))
        assert result.scores[3][0] == result.scores[3][1]
        expected = sum(good > bad for good, bad in result.scores)
        assert result.right == expected and result.total == 4 and result.groups["order"][1] == 2
        assert result.groups["order"][0] <= 1, "the tie in 'order' is never counted right"


def test_two_models_are_two_columns_and_json_is_written(tiny_model_dir, pairs_file, tmp_path, tokenizer_dir, capsys):
    from transformers import AutoTokenizer

    other = tmp_path / "other"
    tiny_bert(len(AutoTokenizer.from_pretrained(tokenizer_dir)), seed=3).save_pretrained(other)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(other)
    out = tmp_path / "results.json"
    assert main(["pairs", str(tiny_model_dir), str(pairs_file), str(other), "--out", str(out), "--device", "cpu"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == [str(tiny_model_dir), str(other)] and table[1].startswith("overall")
    assert any(line.startswith("agreement") for line in table) and any(line.startswith("order") for line in table)
    report = json.loads(out.read_text())
    assert [m["model"] for m in report["models"]] == [str(tiny_model_dir), str(other)]
    assert report["models"][0]["scores"][3]["right"] is False and report["models"][0]["groups"]["agreement"]["pairs"] == 2
    assert main(["pairs", str(tiny_model_dir), str(pairs_file), "--json", "--group-field", ""]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert list(printed["models"][0]["groups"]) == ["(all)"]


def test_bad_pairs_files_are_named_by_line(tiny_model_dir, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(PAIRS[0]) + "\n" + json.dumps({"good": "x", "bad": "y"}) + "\n")
    with pytest.raises(UnmaskError, match=r"bad\.jsonl:2: no sentence in 'sentence_good'"):
        score_pairs(PairsConfig(model=str(tiny_model_dir), pairs=str(path)), echo=quiet)
    path.write_text("{oops\n")
    with pytest.raises(UnmaskError, match=r"bad\.jsonl:1: invalid JSON"):
        score_pairs(PairsConfig(model=str(tiny_model_dir), pairs=str(path)), echo=quiet)
    assert main(["pairs", str(tiny_model_dir), str(path), "--out", str(tmp_path / "no" / "dir.json")]) == 1


def test_a_model_without_a_trained_head_gets_the_chance_note(tiny_model_dir, pairs_file, tmp_path, tokenizer_dir, capsys):
    from transformers import AutoTokenizer, BertModel

    headless = tmp_path / "encoder-only"
    BertModel(tiny_bert(len(AutoTokenizer.from_pretrained(tokenizer_dir))).config).save_pretrained(headless)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(headless)
    assert main(["pairs", str(tiny_model_dir), str(pairs_file), str(headless), "--device", "cpu"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ") and "no trained MLM head" in line]
    assert len(notes) == 1 and notes[0].startswith(f"note: {headless} has no trained MLM head") and "(chance: 50%)" in notes[0]
