"""`unmask serve` over HTTP: every endpoint, its errors, its bounds, traversal attempts, and
50 concurrent fill-mask requests against a real uvicorn server."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from unmask.config import ServeConfig

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def runs(served, tmp_path_factory):
    """This module's own copy of the served folder (and the secret beside it): its tests grow
    a run's metrics, which the browser tests must not see, nor these theirs."""
    import shutil

    copy = tmp_path_factory.mktemp("serve-api") / "served"
    shutil.copytree(served.parent, copy)
    return copy / served.name


@pytest.fixture(scope="module")
def client(runs, tiny_model_dir):
    from starlette.testclient import TestClient

    from unmask.serve.app import create_app

    return TestClient(create_app(ServeConfig(paths=[str(runs)], models=[str(tiny_model_dir)], device="cpu")))


def test_runs_are_listed_with_state_step_tokens_and_held_out_numbers(client):
    runs = {r["id"]: r for r in client.get("/api/runs").json()["runs"]}
    assert set(runs) == {"finished", "team-live"}
    finished = runs["finished"]
    assert finished["state"] == "finished" and finished["step"] == 6 and finished["tokens"] == 6 * 4 * 32
    assert finished["last_eval"]["step"] == 6 and 0 <= finished["last_eval"]["accuracy"] <= 1
    assert runs["team-live"]["state"] == "stopped" and runs["team-live"]["step"] == 3


def test_a_run_page_has_its_config_checkpoints_and_metrics_as_they_grow(client, runs):
    detail = client.get("/api/runs/finished").json()
    assert detail["config"]["max_steps"] == 6 and [c["step"] for c in detail["checkpoints"]] == [3, 6]
    first = client.get("/api/runs/team-live/metrics").json()
    assert len(first["records"]) == 3 and first["next"] == 3
    with open(runs / "team" / "live" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 4, "loss": 4.0, "lr": 1e-3}) + "\n")
        f.write('{"step": 5, "loss": 3.9')  # a line being written: left for the next read
    later = client.get("/api/runs/team-live/metrics?after=3").json()
    assert [r["step"] for r in later["records"]] == [4] and later["next"] == 4
    with open(runs / "team" / "live" / "metrics.jsonl", "a") as f:
        f.write(', "lr": 1e-3}\n')  # the writer finishes its line
    assert [r["step"] for r in client.get("/api/runs/team-live/metrics?after=4").json()["records"]] == [5]


def test_fill_mask_answers_with_top_k_candidates_for_every_mask(client, tiny_model_dir):
    models = [m["id"] for m in client.get("/api/models").json()["models"]]
    assert models == [str(tiny_model_dir), "run:finished"]
    answer = client.post("/api/fill", json={"model": "run:finished", "text": "the cat [MASK] the [MASK] today.", "top_k": 3}).json()
    assert len(answer["masks"]) == 2 and all(len(m["candidates"]) == 3 for m in answer["masks"])
    scores = [c["score"] for c in answer["masks"][0]["candidates"]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1


def test_the_walkthrough_shows_the_draw_and_the_models_loss_at_those_positions(client):
    body = {"model": "run:finished", "text": "the cat sees the door today and a dog reads a book.", "seed": 3, "mask_prob": 0.5}
    answer = client.post("/api/mask", json=body).json()
    picked = [r for r in answer["rows"] if r["picked"]]
    assert answer["picked"] == len(picked) == len(answer["predictions"]) > 0
    assert [p["position"] for p in answer["predictions"]] == [r["position"] for r in picked]
    assert all(r["label"] == -100 for r in answer["rows"] if not r["picked"])
    assert answer["loss"] == pytest.approx(sum(p["loss"] for p in answer["predictions"]) / len(picked))
    assert client.post("/api/mask", json=body).json() == answer, "the same seed, the same draw"
    assert client.post("/api/mask", json={**body, "seed": 4}).json()["rows"] != answer["rows"]
    assert client.post("/api/mask", json={**body, "masking": "whole-word"}).status_code == 200


def test_compare_scores_two_models_on_the_same_positions(client, tiny_model_dir, runs, capfd):
    answer = client.post("/api/compare", json={"base": str(tiny_model_dir), "trained": "run:finished", "data": "finished"}).json()
    assert answer["base_metrics"]["masked_tokens"] == answer["trained_metrics"]["masked_tokens"] > 0
    assert answer["table"][0] == ["metric", "base", "trained", "change"]
    assert (answer["base"], answer["trained"], answer["data"]) == (str(tiny_model_dir), "run:finished", "finished"), "the ids it was given"
    assert str(runs) not in json.dumps(answer), "no server path in the answer"
    assert "eval" not in capfd.readouterr().err, "no progress bar in the server's log"


@pytest.mark.parametrize(
    "method,path,body,status",
    [
        ("post", "/api/fill", {"model": "run:finished", "text": "x" * 1001 + " [MASK]"}, 413),
        ("post", "/api/fill", {"model": "run:finished", "text": "[MASK] " * 17}, 413),
        ("post", "/api/fill", {"model": "run:finished", "text": "a [MASK]", "top_k": 500}, 422),
        ("post", "/api/fill", {"model": "run:finished", "text": "a [MASK]", "top_k": "five"}, 422),
        ("post", "/api/fill", {"model": "run:finished", "text": "no mask here"}, 400),
        ("post", "/api/fill", {"model": "/etc", "text": "a [MASK]"}, 404),
        ("post", "/api/fill", {"model": "run:../../secret", "text": "a [MASK]"}, 404),
        ("post", "/api/fill", {"text": "a [MASK]"}, 404),
        ("post", "/api/mask", {"model": "run:finished", "text": "a b", "seed": -1}, 422),
        ("post", "/api/mask", {"model": "run:finished", "text": "a b", "masking": "everything"}, 422),
        ("post", "/api/compare", {"base": "run:finished", "trained": "run:finished", "data": "../secret"}, 404),
        ("get", "/api/runs/..%2F..%2Fsecret.txt", None, 404),
        ("get", "/api/runs/finished/metrics?after=x", None, 422),
        ("get", "/static/../../secret.txt", None, 404),
        ("get", "/static/..%2F..%2F..%2Fsecret.txt", None, 404),
    ],
)
def test_bad_requests_get_a_clear_4xx_and_no_path_escapes(client, method, path, body, status):
    response = client.post(path, json=body) if method == "post" else client.get(path)
    assert response.status_code == status, response.text
    assert "not to be served" not in response.text
    if path.startswith("/api"):
        assert response.json()["error"]


def test_a_body_that_is_not_json_is_a_400_and_the_server_goes_on(client):
    assert client.post("/api/fill", content=b"{not json", headers={"content-type": "application/json"}).status_code == 400
    assert client.post("/api/fill", json=["a list"]).status_code == 400
    assert client.get("/api/runs").status_code == 200


def test_the_page_is_served_from_the_package_with_no_outside_resource(client):
    html = client.get("/").text
    assert "/static/app.js" in html and "http" not in html.replace("http-equiv", "")
    script = client.get("/static/app.js").text
    assert "fetch(" in script and "https://" not in script and "http://" not in script


@pytest.mark.slow
def test_fifty_concurrent_fill_requests_are_all_answered(live_server):
    import httpx

    texts = [f"the cat [MASK] the door {i} times." for i in range(50)]

    def ask(text):
        return httpx.post(f"{live_server}/api/fill", json={"model": "run:finished", "text": text, "top_k": 3}, timeout=120)

    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(ask, texts))
    assert [a.status_code for a in answers] == [200] * 50
    assert all(len(a.json()["masks"]) == 1 for a in answers)


def test_the_server_listens_on_this_machine_only_by_default():
    assert ServeConfig().host == "127.0.0.1"


def test_a_port_in_use_is_refused_in_one_line_before_anything_is_announced(tmp_path, capsys):
    import socket

    from unmask.cli.main import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", str(tmp_path), "--port", str(port)]) == 1
    captured = capsys.readouterr()
    assert f"--port {port}: already in use on 127.0.0.1" in captured.err and "open http" not in captured.out


def test_a_runs_folder_that_does_not_exist_is_refused(tmp_path, capsys):
    from unmask.cli.main import main

    assert main(["serve", str(tmp_path / "runz")]) == 1
    assert "runz: no such folder of runs" in capsys.readouterr().err


def test_fine_tuning_folders_are_not_offered_as_mlm_runs(served, tiny_model_dir, tmp_path, capsys):
    """A fine-tuning output has config.yaml, metrics and checkpoints like a run, but its loss
    is a task's and its head is not an MLM head: the page leaves it out and says so."""
    import shutil

    from conftest import classification_records, write_jsonl
    from starlette.testclient import TestClient

    from unmask.config import FinetuneConfig
    from unmask.serve.app import create_app
    from unmask.tasks.finetune import finetune

    root = tmp_path / "runs"
    shutil.copytree(served / "finished", root / "finished")
    data = write_jsonl(tmp_path / "t.jsonl", classification_records(24))
    for name, seeds in (("tickets", 1), ("tickets-seeds", 2)):
        finetune(
            FinetuneConfig(
                model=str(tiny_model_dir), train=data, eval=data, out=str(root / name), epochs=1, seeds=seeds, progress="none", device="cpu"
            ),
            echo=lambda _: None,
            progress=False,
        )
    client = TestClient(create_app(ServeConfig(paths=[str(root)], models=[str(tiny_model_dir)], device="cpu")))
    listed = client.get("/api/runs").json()
    assert [r["id"] for r in listed["runs"]] == ["finished"], "neither a fine-tuning nor one of its seeds is an MLM run"
    assert sorted(listed["fine_tuning"]) == ["tickets", "tickets-seeds"]
    assert client.get("/api/runs/tickets").status_code == 404
