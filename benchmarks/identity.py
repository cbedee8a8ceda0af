"""Does a change leave what unmask computes alone? The quick start's run, in fp32 (forced, so
that any CPU computes it the same way), straight and interrupted-then-resumed: prints the
held-out loss (every digit) and the SHA-256 of each run's final weights, as JSON.

    python benchmarks/identity.py --out /tmp/identity > before.json
    # ... the change ...
    python benchmarks/identity.py --out /tmp/identity > after.json && diff before.json after.json

The store is the quick start's (`prepare sample:pydocs --doc-per blank-line --val-fraction
0.1`), the run `configs/minilm-pydocs.yaml` (100 steps, checkpoints every 50); the resumed run
stops after step 50's checkpoint and resumes to the end. A refactor that keeps the arithmetic
prints the same three values; the resumed weights equal the straight ones.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from pathlib import Path

import unmask
from unmask.api import train_settings
from unmask.config import TrainConfig, load_partial_yaml
from unmask.pretrain.train import train

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "minilm-pydocs.yaml"


def weights_digest(run: Path) -> str:
    return hashlib.sha256((run / "model" / "model.safetensors").read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="a scratch folder (replaced)")
    parser.add_argument("--stop-after", type=int, default=50, help="the step the resumed run is stopped after")
    args = parser.parse_args()
    os.environ["UNMASK_CPU_PRECISION"] = "fp32"
    shutil.rmtree(args.out, ignore_errors=True)
    store = args.out / "pydocs"
    unmask.prepare("sample:pydocs", out=str(store), doc_per="blank-line", val_fraction=0.1)
    settings = {k: v for k, v in load_partial_yaml(TrainConfig, CONFIG).items() if k not in ("data", "out")}

    def run(name: str, **more):
        config = train_settings(data=str(store), out=str(args.out / name), progress="none", **settings, **more)
        return train(config, progress=False, echo=lambda _: None, **({"on_step": stop} if name == "resumed" and not more else {}))

    def stop(step: int) -> None:
        if step == args.stop_after:
            raise KeyboardInterrupt

    straight = run("straight")
    try:
        run("resumed")
    except KeyboardInterrupt:
        pass
    run("resumed", resume=True)
    print(
        json.dumps(
            {
                "eval_loss": repr(straight["eval_loss"]),
                "eval_accuracy": repr(straight["eval_accuracy"]),
                "straight_weights": weights_digest(args.out / "straight"),
                "resumed_weights": weights_digest(args.out / "resumed"),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
