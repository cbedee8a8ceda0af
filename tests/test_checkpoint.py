"""Checkpoints: safetensors + JSON, published whole, verified, passed over when damaged."""

import json

import pytest
import torch

from conftest import tiny_bert
from unmask import checkpoint
from unmask.config import UnmaskError


def model_and_optimizer(seed: int = 0):
    model = tiny_bert(60, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(5, 60, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    return model, optimizer


def save(run_dir, step, model, optimizer, keep=3):
    return checkpoint.save_checkpoint(run_dir, step, model, optimizer, {"torch": torch.get_rng_state()}, {"epoch": 0, "position": step}, keep, {"device_type": "cpu"})


def test_save_then_load_restores_weights_optimizer_and_state(tmp_path):
    model, optimizer = model_and_optimizer()
    path = save(tmp_path, 5, model, optimizer)
    assert path.name == "step-00000005" and checkpoint.verify(path) is None
    fresh, fresh_optimizer = model_and_optimizer(seed=1)
    restored = checkpoint.load_checkpoint(path, fresh, fresh_optimizer)
    assert restored.step == 5 and restored.data == {"epoch": 0, "position": 5} and restored.info == {"device_type": "cpu"}
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    ours, theirs = optimizer.state_dict(), fresh_optimizer.state_dict()
    for index, entries in ours["state"].items():
        for key, value in entries.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(theirs["state"][index][key])), (index, key)
    assert ours["param_groups"] == theirs["param_groups"]
    assert not list((tmp_path / "checkpoints").glob(".*")), "no hidden leftovers"


def test_resaving_a_step_replaces_it_whole_and_keep_deletes_the_oldest(tmp_path):
    model, optimizer = model_and_optimizer()
    for step in (1, 2, 3):
        save(tmp_path, step, model, optimizer, keep=2)
    save(tmp_path, 3, model, optimizer, keep=2)
    assert [p.name for p in checkpoint.complete_step_dirs(tmp_path / "checkpoints")] == ["step-00000002", "step-00000003"]
    assert all(checkpoint.verify(p) is None for p in checkpoint.complete_step_dirs(tmp_path / "checkpoints"))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]


@pytest.mark.parametrize(
    "damage,problem",
    [
        (lambda p: (p / "optimizer.safetensors").write_bytes((p / "optimizer.safetensors").read_bytes()[:100]), "checksum"),
        (lambda p: (p / "model.safetensors").unlink(), "model.safetensors is missing"),
        (lambda p: (p / "state.json").write_text("{not json"), "unreadable state.json"),
    ],
    ids=["truncated", "missing-file", "garbage-state"],
)
def test_a_damaged_newest_checkpoint_is_named_and_passed_over(tmp_path, damage, problem):
    model, optimizer = model_and_optimizer()
    save(tmp_path, 3, model, optimizer)
    newest = save(tmp_path, 6, model, optimizer)
    damage(newest)
    (tmp_path / "checkpoints" / ".step-00000009.partial-1").mkdir()
    warnings = []
    assert checkpoint.latest_checkpoint(tmp_path, warn=warnings.append).name == "step-00000003"
    assert len(warnings) == 1 and str(newest) in warnings[0] and problem in warnings[0]


def test_a_checkpoint_for_another_model_is_refused_clearly(tmp_path):
    model, optimizer = model_and_optimizer()
    path = save(tmp_path, 1, model, optimizer)
    other = tiny_bert(70)
    with pytest.raises(UnmaskError, match="cannot restore checkpoint"):
        checkpoint.load_checkpoint(path, other, torch.optim.AdamW(other.parameters()))
    state = json.loads((path / "state.json").read_text())
    assert set(state) == {"step", "data", "optimizer", "info", "files"}
