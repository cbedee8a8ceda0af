"""Checkpoints: safetensors + JSON, published whole, verified, passed over when damaged."""

import json

import pytest
import torch
from conftest import tiny_bert
from safetensors.torch import load_file

from unmask.config import UnmaskError
from unmask.storage import checkpoint
from unmask.storage.rundir import RunDir


def model_and_optimizer(seed: int = 0):
    model = tiny_bert(60, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(5, 60, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    return model, optimizer


def names(model) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def aliases(model) -> dict[str, str]:
    first, found = {}, {}
    for name, p in model.named_parameters(remove_duplicate=False):
        found.update({name: first[id(p)]} if id(p) in first else {})
        first.setdefault(id(p), name)
    return found


def weights(model) -> dict:
    return {k: v for k, v in model.state_dict().items() if k not in aliases(model)}


def save(run_dir, step, model, optimizer, keep=3):
    info = checkpoint.CheckpointInfo(step=step, epoch=0, position=step, device_type="cpu")
    return checkpoint.save_checkpoint(
        RunDir(run_dir), info, weights(model), checkpoint.named_optimizer_state(optimizer, names(model)), keep
    )


def order(model, optimizer) -> list[str]:
    return [names(model)[id(p)] for g in optimizer.param_groups for p in g["params"]]


def restore(path, model, optimizer) -> checkpoint.Checkpoint:
    saved = checkpoint.read_checkpoint(path)
    state = dict(saved.model, **{alias: saved.model[name] for alias, name in aliases(model).items() if alias not in saved.model})
    model.load_state_dict(state, strict=True)
    optimizer.load_state_dict(checkpoint.indexed_optimizer_state(saved.optimizer, optimizer, names(model)))
    return saved


def test_save_then_load_restores_weights_optimizer_and_state(tmp_path):
    model, optimizer = model_and_optimizer()
    path = save(tmp_path, 5, model, optimizer)
    assert path.name == "step-00000005" and checkpoint.verify(path) is None
    fresh, fresh_optimizer = model_and_optimizer(seed=1)
    restored = restore(path, fresh, fresh_optimizer)
    assert restored.step == 5 and (restored.info.epoch, restored.info.position) == (0, 5) and restored.info.device_type == "cpu"
    assert "bert.embeddings.word_embeddings.weight:exp_avg" in load_file(str(path / "optimizer.safetensors"))
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
    assert [p.name for p in [p for _, p in RunDir(tmp_path).checkpoint_steps()]] == ["step-00000002", "step-00000003"]
    assert all(checkpoint.verify(p) is None for p in [p for _, p in RunDir(tmp_path).checkpoint_steps()])
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
    assert checkpoint.latest_checkpoint(RunDir(tmp_path), warn=warnings.append).name == "step-00000003"
    assert len(warnings) == 1 and str(newest) in warnings[0] and problem in warnings[0]


def test_a_checkpoint_of_another_format_is_refused_by_name(tmp_path):
    model, optimizer = model_and_optimizer()
    path = save(tmp_path, 4, model, optimizer)
    state = json.loads((path / "state.json").read_text())
    (path / "state.json").write_text(json.dumps({**state, "format": 1}))
    with pytest.raises(UnmaskError, match=r"checkpoint format 1 is not one this unmask reads \(2\)"):
        checkpoint.read_checkpoint(path)


def test_a_damaged_or_foreign_checkpoint_is_refused_clearly(tmp_path):
    model, optimizer = model_and_optimizer()
    path = save(tmp_path, 1, model, optimizer)
    other = tiny_bert(70)
    with pytest.raises(RuntimeError, match="size mismatch"):
        restore(path, other, torch.optim.AdamW(other.parameters()))
    (path / "optimizer.safetensors").write_bytes(b"garbage")
    with pytest.raises(UnmaskError, match="cannot read checkpoint"):
        checkpoint.read_checkpoint(path)
    state = json.loads((path / "state.json").read_text())
    assert set(state) == {"format", "step", "data", "optimizer", "info", "files"}
