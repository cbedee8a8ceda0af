"""Names to folders: typo'd paths answered at once, folders that are not models named for what
they are, a run's checkpoints loadable as models, and an unreachable hub detected in seconds."""

import os
import time

import pytest
import torch
from conftest import quiet

from unmask.config import TrainConfig
from unmask.data.tokenizer import load_tokenizer
from unmask.errors import UnmaskError
from unmask.models.masked_lm import load_mlm
from unmask.pretrain.train import train
from unmask.storage import names
from unmask.storage.names import ModelSource, resolve_model, resolve_pretrained


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, store_dir, tiny_model_dir):
    """A run stopped at step 4 (checkpoints at 2 and 4, no model/) beside a finished one."""
    runs = tmp_path_factory.mktemp("hub") / "runs"

    def stop_at_4(step: int) -> None:
        if step == 4:
            raise KeyboardInterrupt

    settings = dict(data=str(store_dir), model=str(tiny_model_dir), seq_len=32, batch_size=4, eval_every=0, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):
        train(
            TrainConfig(out=str(runs / "stopped"), max_steps=6, keep_checkpoints=5, **settings),
            progress=False,
            echo=quiet,
            on_step=stop_at_4,
        )
    train(TrainConfig(out=str(runs / "finished"), max_steps=2, **settings), progress=False, echo=quiet)
    return runs


def test_a_typo_in_a_local_path_is_answered_at_once_with_the_closest_names(stopped_run, monkeypatch):
    monkeypatch.chdir(stopped_run.parent)
    monkeypatch.setattr(names, "hub_reachable", lambda timeout=2.0: pytest.fail("a local path must never reach for the hub"))
    started = time.monotonic()
    with pytest.raises(UnmaskError, match=r"'runs/finshed': no such folder; did you mean runs/finished\?"):
        resolve_pretrained("runs/finshed")
    with pytest.raises(UnmaskError, match=r"'runs/nope/model': no such folder$"):
        load_tokenizer("runs/nope/model")
    assert time.monotonic() - started < 2


def test_folders_that_are_not_models_are_named_for_what_they_are(stopped_run, store_dir):
    stopped = str(stopped_run / "stopped")
    with pytest.raises(
        UnmaskError, match=r"is a run with no final model yet \(stopped at step 4\): load a checkpoint with --step 4 \(steps: 2, 4\)"
    ):
        resolve_pretrained(stopped)
    with pytest.raises(UnmaskError, match=r"unmask export .* --out DIR.*unmask train --out .* --resume"):
        load_mlm(stopped, echo=quiet)
    with pytest.raises(UnmaskError, match=r"is a token store \(made by `unmask prepare`\), not a model"):
        load_mlm(str(store_dir), echo=quiet)
    with pytest.raises(UnmaskError, match=r"is a folder of runs, not a model: name one of them \(.*finished, .*stopped\)"):
        load_mlm(str(stopped_run), echo=quiet)
    assert load_tokenizer(str(store_dir)).mask_token == "[MASK]", "a store carries its tokenizer"


def test_a_checkpoint_of_a_stopped_run_loads_as_a_model(stopped_run):
    from safetensors.torch import load_file

    by_step = resolve_model(str(stopped_run / "stopped"), step=2)
    by_folder = resolve_model(str(stopped_run / "stopped" / "checkpoints" / "step-00000002"))
    assert by_step.step == by_folder.step == 2 and by_step.folder == by_folder.folder
    lm = load_mlm(by_folder, echo=quiet)
    saved = load_file(str(by_folder.checkpoint / "model.safetensors"))
    assert all(torch.equal(lm.model.state_dict()[k], v) for k, v in saved.items())
    assert load_tokenizer(by_folder).mask_token == "[MASK]"
    with pytest.raises(UnmaskError, match=r"--step 3: .* no checkpoint at that step \(steps: 2, 4\)"):
        resolve_model(str(stopped_run / "stopped"), step=3)
    finished = resolve_model(str(stopped_run / "finished"))
    assert finished == ModelSource(str(stopped_run / "finished"), str(stopped_run / "finished" / "model"))


def test_an_unreachable_hub_switches_the_already_imported_client_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(names, "hub_reachable", lambda timeout=2.0: False)
    names.go_offline_if_unreachable("bert-base-uncased")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert constants.is_offline_mode(), "huggingface_hub read the variable at import: its own setting must change too"


def test_a_name_lookup_that_hangs_is_cut_off_at_the_timeout(monkeypatch):
    import socket

    def hangs(*args, **kwargs):
        time.sleep(10)
        raise OSError("no answer")

    monkeypatch.setattr(socket, "create_connection", hangs)
    started = time.monotonic()
    assert names.hub_reachable(timeout=0.5) is False
    assert time.monotonic() - started < 2


def test_a_model_name_near_an_alias_or_a_local_folder_is_suggested(tmp_path, monkeypatch):
    from unmask.data.tokenizer import load_tokenizer
    from unmask.errors import UnmaskError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub id that is not cached fails at once
    (tmp_path / "my-run").mkdir()
    assert names.did_you_mean("minilm-l5") == " (did you mean minilm-l6?)"
    assert names.did_you_mean("my-rn") == " (did you mean my-run?)"
    assert names.did_you_mean("bert-base-uncased") == "" and names.did_you_mean("my-run") == ""
    with pytest.raises(UnmaskError, match=r"cannot load a tokenizer from hub id 'minilm-l5' \(did you mean minilm-l6\?\): "):
        load_tokenizer("minilm-l5")
