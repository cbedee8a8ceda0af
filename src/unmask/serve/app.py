"""The ASGI app of `unmask serve`: a JSON API over runs and models, and the static page.

Safety: the server only reads the runs under the folders it was started with and the
models it was given; a request names them by id, never by path. Inputs are bounded and a
bad request gets a 4xx with a message; an unexpected failure is a 500 for that request
only. Models are loaded once, shared, and used one request at a time each.
"""

from __future__ import annotations

import errno
import socket
import threading
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from unmask.config import ServeConfig, parse_sources
from unmask.errors import UnmaskError, optional_import
from unmask.serve import runs as run_folders
from unmask.storage.storedir import StoreDir

STATIC = Path(__file__).resolve().parent / "static"
MAX_TEXT = 1000
MAX_TOP_K = 50
MAX_MASKS = 16


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Models:
    """The models a server offers: each run's final model, and those given with --models."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.loaded: dict[str, Any] = {}
        self.locks: dict[str, threading.Lock] = {}
        self.loading = threading.Lock()

    def available(self) -> dict[str, str]:
        """id -> where it loads from."""
        offered = {name: name for name in self.config.models}
        for run in run_folders.discover(self.config.paths).values():
            if run.dir.has_model():
                offered[f"run:{run.id}"] = str(run.dir.model)
        return offered

    def get(self, model_id: Any):
        """(model, its lock), loaded on first use; a 404 for an id this server does not offer."""
        from unmask.infer import Filler

        offered = self.available()
        if not isinstance(model_id, str) or model_id not in offered:
            raise BadRequest(404, f"no model {model_id!r} here (models: {', '.join(offered) or 'none'})")
        with self.loading:
            if model_id not in self.loaded:
                trusted = self.config.trust_remote_code and model_id in self.config.models
                self.loaded[model_id] = Filler(
                    offered[model_id],
                    device=self.config.device,
                    trust_remote_code=trusted,
                    echo=lambda _: None,
                    precision=self.config.precision,
                )
                self.locks[model_id] = threading.Lock()
        return self.loaded[model_id], self.locks[model_id]


def _field(body: dict, name: str, kind: type, default: Any = None, low: float | None = None, high: float | None = None) -> Any:
    value = body.get(name, default)
    if value is None:
        raise BadRequest(422, f"'{name}' is required")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise BadRequest(422, f"'{name}' must be a {kind.__name__}")
    if low is not None and value < low or high is not None and value > high:
        raise BadRequest(422, f"'{name}' must be between {low} and {high}, got {value}")
    return value


def _text(body: dict) -> str:
    text = _field(body, "text", str)
    if not text.strip():
        raise BadRequest(422, "'text' is empty")
    if len(text) > MAX_TEXT:
        raise BadRequest(413, f"'text' is {len(text)} characters; at most {MAX_TEXT}")
    return text


def _endpoint(handler: Callable[..., Any]) -> Callable[[Request], Any]:
    """JSON in, JSON out; every failure answered, none taking the server down."""

    async def endpoint(request: Request) -> JSONResponse:
        from starlette.concurrency import run_in_threadpool

        try:
            body = {}
            if request.method == "POST":
                try:
                    body = await request.json()
                except ValueError:
                    raise BadRequest(400, "the body is not JSON") from None
                if not isinstance(body, dict):
                    raise BadRequest(400, "the body must be a JSON object")
            return JSONResponse(await run_in_threadpool(handler, request, body))
        except BadRequest as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        except UnmaskError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        except Exception as e:  # a bug must not stop the server: this request fails, the next is served
            traceback.print_exc()
            return JSONResponse({"error": f"internal error: {type(e).__name__}: {e}"}, status_code=500)

    return endpoint


class Api:
    """The JSON endpoints, over the runs and models `config` offers (and nothing else)."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.models = Models(config)
        self.compared: dict[tuple, dict] = {}
        """Comparisons made, by (base, trained, store): each is computed once."""

    def find_run(self, run_id: str) -> run_folders.RunFolder:
        found = run_folders.discover(self.config.paths).get(run_id)
        if found is None:
            raise BadRequest(404, f"no run {run_id!r} here")
        return found

    def list_runs(self, request: Request, body: dict) -> dict:
        runs, fine_tuning = run_folders.scan(self.config.paths)
        return {"runs": [run_folders.describe(run) for run in runs.values()], "fine_tuning": [path.name for path in fine_tuning]}

    def one_run(self, request: Request, body: dict) -> dict:
        return run_folders.describe(self.find_run(request.path_params["run_id"]), detail=True)

    def metrics(self, request: Request, body: dict) -> dict:
        run = self.find_run(request.path_params["run_id"])
        try:
            after = max(0, int(request.query_params.get("after", "0")))
        except ValueError:
            raise BadRequest(422, "'after' must be a whole number") from None
        records, lines = run_folders.read_metrics(run.path, after)
        return {
            "records": records,
            "next": lines,
            "state": run_folders.describe(run)["state"],
            "downstream": run_folders.downstream(run.path),
        }

    def list_models(self, request: Request, body: dict) -> dict:
        return {"models": [{"id": model_id, "label": model_id.removeprefix("run:")} for model_id in self.models.available()]}

    def fill(self, request: Request, body: dict) -> dict:
        text, top_k = _text(body), _field(body, "top_k", int, 5, 1, MAX_TOP_K)
        masks = text.count("[MASK]") + text.count("<mask>")
        if masks > MAX_MASKS:
            raise BadRequest(413, f"{masks} masks; at most {MAX_MASKS}")
        filler, lock = self.models.get(body.get("model"))
        with lock:
            [result] = filler.fill([text], top_k=top_k)
        return {"model": body["model"], "text": text, "masks": [asdict(m) for m in result.masks], "filled": result.best_guess()}

    def mask(self, request: Request, body: dict) -> dict:
        from unmask.serve.walkthrough import walkthrough

        text = _text(body)
        seed = _field(body, "seed", int, 0, 0, 2**31 - 1)
        mask_prob = _field(body, "mask_prob", float, 0.15, 0.01, 0.99)
        masking = body.get("masking", "token")
        if masking not in ("token", "whole-word", "span"):
            raise BadRequest(422, "'masking' must be token, whole-word or span")
        filler, lock = self.models.get(body.get("model"))
        with lock:
            return walkthrough(filler, text, seed, mask_prob, masking)

    def compare(self, request: Request, body: dict) -> dict:
        from unmask.evaluation.compare import compare as compare_models

        base, trained = body.get("base"), body.get("trained")
        offered = self.models.available()
        for name, value in (("base", base), ("trained", trained)):
            if value not in offered:
                raise BadRequest(404, f"no model {value!r} for '{name}' (models: {', '.join(offered)})")
        run = self.find_run(_field(body, "data", str))
        entries = run_folders.describe(run, detail=True)["config"].get("data") or []
        entries = [entries] if isinstance(entries, str) else entries
        store = parse_sources(entries)[0][1] if entries else None  # the run's first store
        if not store or not StoreDir(store).looks_like_store():
            raise BadRequest(422, f"run {run.id!r} names no token store that is here to score on")
        key = (offered[base], offered[trained], store)
        with self.models.loading:  # one comparison at a time; each result is kept
            if key not in self.compared:
                self.compared[key] = compare_models(
                    offered[base],
                    offered[trained],
                    [store],
                    None,
                    max_batches=self.config.compare_batches,
                    device=self.config.device,
                    echo=lambda _: None,
                    progress=False,
                )
        # The ids the request gave, never the server's own paths.
        return {**self.compared[key], "base": base, "trained": trained, "data": run.id}


def create_app(config: ServeConfig) -> Starlette:
    api = Api(config)

    async def index(request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html")

    routes = [
        Route("/", index),
        Route("/api/runs", _endpoint(api.list_runs)),
        Route("/api/runs/{run_id}", _endpoint(api.one_run)),
        Route("/api/runs/{run_id}/metrics", _endpoint(api.metrics)),
        Route("/api/models", _endpoint(api.list_models)),
        Route("/api/fill", _endpoint(api.fill), methods=["POST"]),
        Route("/api/mask", _endpoint(api.mask), methods=["POST"]),
        Route("/api/compare", _endpoint(api.compare), methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_found})


async def _not_found(request: Request, exc: Exception):
    """The API answers JSON even for a path no route matches, so the page can show why."""
    from starlette.exceptions import HTTPException
    from starlette.responses import PlainTextResponse

    status = exc.status_code if isinstance(exc, HTTPException) else 404
    message = "no such API endpoint" if status == 404 else f"{request.method} is not allowed here"
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": f"{message}: {request.url.path}"}, status_code=status)
    return PlainTextResponse("Not Found" if status == 404 else "Method Not Allowed", status_code=status)


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), or one line saying why it cannot be: checked before
    anything is printed, so a port someone else serves on is never announced as ours."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UnmaskError(f"--port {port}: already in use on {host} (another server?); choose another with --port") from None
        raise UnmaskError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
    sock.listen(128)
    return sock


def check_paths(paths: list[str]) -> None:
    """Every folder given must exist: a typo would otherwise serve an empty page."""
    for path in paths:
        if not Path(path).is_dir():
            raise UnmaskError(f"{path}: no such folder of runs" if not Path(path).exists() else f"{path}: not a folder")


def serve(config: ServeConfig) -> None:
    """Run the server until Ctrl-C."""
    uvicorn = optional_import("uvicorn", "unmask serve", "serve")
    check_paths(config.paths)
    sock = listening_socket(config.host, config.port)
    found, fine_tunings = run_folders.scan(config.paths)
    left_out = (
        f" (left out {len(fine_tunings)} fine-tuning folder(s), which are not MLM runs: {', '.join(p.name for p in fine_tunings[:3])}"
        f"{', ...' if len(fine_tunings) > 3 else ''}; their results are in their summary.json)"
        if fine_tunings
        else ""
    )
    print(
        f"unmask serve: {len(found)} run(s) under {', '.join(config.paths)}{left_out}; open http://{config.host}:{config.port}/", flush=True
    )
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning"))
    server.run(sockets=[sock])
