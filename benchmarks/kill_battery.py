"""Kill -9 a training run at random moments, many times, then resume it; compare with a run
that was never interrupted. Prints how many kills landed inside a checkpoint write or the
final model save, and whether the final weights are identical bit for bit.

    python benchmarks/kill_battery.py --kills 30

Every resume is run as a requeued job runs it (`unmask train --out RUN --resume`), and some
kills land before the first checkpoint. The tests do the same with 10 kills
(tests/e2e/test_faults.py); this is the longer version.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    import conftest
    from test_faults import kill_repeatedly, requeued_command, same_weights, settings, unmask_process, weights
    from transformers import AutoTokenizer

    from unmask.config import PrepareConfig
    from unmask.data.prepare import prepare

    work = Path(tempfile.mkdtemp(prefix="unmask-kills-"))

    class Folders:
        def mktemp(self, name):
            folder = work / name
            folder.mkdir(parents=True, exist_ok=True)
            return folder

    corpus = Folders().mktemp("corpus")
    for i, text in enumerate(conftest.make_documents(40)):
        (corpus / f"doc{i:03d}.txt").write_text(text + "\n")
    tokenizer = conftest.tokenizer_dir.__wrapped__(Folders())
    model = work / "model"
    conftest.tiny_bert(len(AutoTokenizer.from_pretrained(tokenizer))).save_pretrained(model)
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(model)
    store = work / "store"
    prepare(PrepareConfig(sources=[str(corpus)], out=str(store), tokenizer=str(tokenizer), val_fraction=0.1), progress=False)

    started = time.time()
    straight, killed = work / "straight", work / "killed"
    options = dict(dropout=0.1, max_steps=args.steps)
    assert unmask_process(*settings(str(store), str(model), straight, **options)).wait() == 0
    job = settings(str(store), str(model), killed, **options)
    landed, inside, before_first = kill_repeatedly(job, killed, args.kills, args.seed, early=max(1, args.kills // 6))
    final = unmask_process(*requeued_command(job, killed))
    assert final.wait() == 0, final.stderr.read()
    identical = same_weights(weights(killed), weights(straight))
    print(
        f"{landed} kills, {before_first} before the first checkpoint and {inside} inside a checkpoint write or the final model save; "
        f"final weights {'identical bit for bit' if identical else 'DIFFERENT'} to the uninterrupted run ({time.time() - started:.0f} s)"
    )
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if identical else 1)


if __name__ == "__main__":
    main()
