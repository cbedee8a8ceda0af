"""Tokens/s of `unmask prepare` against `--workers`, and whether every store is the same.

    python benchmarks/prepare_workers.py --corpus ../shared/corpus/pydocs --copies 4 --workers 1,2

Prepares `--copies` copies of the corpus (the MiniLM tokenizer, 10% held out) once per
worker count, in a subprocess each, and compares every store's files byte for byte with the
one-worker store. Appends a table to benchmarks/RESULTS.md. Nothing else should run
meanwhile: the numbers are wall-clock time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEAK_OF = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def digest(store: Path) -> dict[str, str]:
    """Each file of a store (its metadata's timing field aside) by content hash."""
    hashes = {}
    for path in sorted(p for p in store.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name == "meta.json":
            meta = json.loads(data)
            meta.pop("seconds", None)  # how long it took, the one field that may differ
            data = json.dumps(meta, sort_keys=True).encode()
        hashes[str(path.relative_to(store))] = hashlib.sha256(data).hexdigest()
    return hashes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(HERE.parent.parent / "shared" / "corpus" / "pydocs"))
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--workers", default=f"1,{os.cpu_count()}")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args()
    from unmask.runtime.hardware import cpu_name

    work = Path(tempfile.mkdtemp(prefix="unmask-prepare-workers-"))
    corpus = work / "corpus"
    for copy in range(args.copies):
        shutil.copytree(args.corpus, corpus / f"copy-{copy}")
    rows, reference = [], None
    for workers in sorted({int(w) for w in args.workers.split(",")}):
        store = work / f"store-{workers}"
        command = [
            sys.executable,
            "-m",
            "unmask",
            "prepare",
            str(corpus),
            "--out",
            str(store),
            "--val-fraction",
            "0.1",
            "--workers",
            str(workers),
        ]
        began = time.perf_counter()
        # Through a fresh parent, so that the peak RSS is this command's alone (its largest process).
        result = subprocess.run(
            [sys.executable, "-c", PEAK_OF, *command], check=True, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
        seconds = time.perf_counter() - began
        peak = int(result.stdout.strip().splitlines()[-1]) / 1024
        meta = json.loads((store / "meta.json").read_text())
        tokens = sum(split["tokens"] for split in meta["splits"].values())
        hashes = digest(store)
        reference = reference or hashes
        rows.append((workers, tokens, seconds, peak, hashes == reference))
        print(f"--workers {workers}: {tokens:,} tokens in {seconds:.1f} s, {tokens / seconds:,.0f} tokens/s", flush=True)
    base = rows[0][1] / rows[0][2]
    lines = [
        "",
        "---",
        "",
        "## `unmask prepare --workers N`",
        "",
        f"- command: `python benchmarks/prepare_workers.py {' '.join(sys.argv[1:])}`",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; {cpu_name()}, {os.cpu_count()} cores",
        f"- {args.copies} copies of the pydocs corpus, the MiniLM (bert-base-uncased) tokenizer, 10% held out; wall-clock seconds of the whole"
        " command (start-up, reading, tokenizing, writing); peak RSS is the largest single process's",
        "",
        "| workers | tokens | seconds | tokens/s | scaling | peak RSS MB | store identical to 1 worker's |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {w} | {t:,} | {s:.1f} | {t / s:,.0f} | {t / s / base:.2f}x | {p:,.0f} | {'yes' if same else 'NO'} |"
            for w, t, s, p, same in rows
        ),
        "",
    ]
    with open(args.out, "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
