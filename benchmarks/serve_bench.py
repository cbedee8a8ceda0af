"""Fill-mask latency through `unmask serve` and the page's load time in a browser.

    python benchmarks/serve_bench.py --requests 200

Starts the server (uvicorn, in a thread) with the MiniLM-L6 starter, warms it up, sends
200 fill-mask requests one after another from a local HTTP client and prints the p50/p95
latency; then loads each page in headless Chromium (when installed) and prints the time to
DOMContentLoaded and to load.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--model", default="minilm-l6")
    args = parser.parse_args()

    import httpx
    import uvicorn

    from unmask.config import ServeConfig
    from unmask.serve.app import create_app

    folder = Path(tempfile.mkdtemp(prefix="unmask-serve-bench-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(ServeConfig(paths=[str(folder)], models=[args.model], device="cpu")),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    texts = [f"The [MASK] statement number {i} leaves a loop early in Python code." for i in range(args.requests)]
    with httpx.Client(timeout=120) as client:
        for text in texts[:5]:  # load the model, warm up
            client.post(f"{url}/api/fill", json={"model": args.model, "text": text}).raise_for_status()
        latencies = []
        for text in texts:
            started = time.perf_counter()
            client.post(f"{url}/api/fill", json={"model": args.model, "text": text, "top_k": 5}).raise_for_status()
            latencies.append(1000 * (time.perf_counter() - started))
    latencies.sort()
    p95 = latencies[int(0.95 * len(latencies)) - 1]
    print(
        f"fill-mask through the server, {args.model}, CPU, {len(latencies)} sequential requests: "
        f"p50 {statistics.median(latencies):.1f} ms, p95 {p95:.1f} ms, mean {statistics.mean(latencies):.1f} ms"
    )

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium and driver:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={folder / 'profile'}",
        ):
            options.add_argument(flag)
        browser = webdriver.Chrome(service=Service(executable_path=driver), options=options)
        for name in ("runs", "fill", "masking", "compare"):
            loads = []
            for _ in range(5):
                browser.get("about:blank")
                browser.get(f"{url}/#/{name}")
                timing = browser.execute_script(
                    "const t = performance.getEntriesByType('navigation')[0]; return [t.domContentLoadedEventEnd, t.loadEventEnd];"
                )
                loads.append(timing)
            print(
                f"page #/{name}: DOMContentLoaded {statistics.median(t[0] for t in loads):.0f} ms, "
                f"load {statistics.median(t[1] for t in loads):.0f} ms (median of 5)"
            )
        browser.quit()
    else:
        print("no chromium/chromedriver here: page load time not measured")
    server.should_exit = True
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
