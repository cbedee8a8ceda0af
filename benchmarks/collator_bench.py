"""What unmask's MaskingCollator costs per batch against DataCollatorForLanguageModeling, on
the same records (the bundled starter's bert-base-uncased vocabulary, the bundled pydocs
sample cut into 128-token records).

    python benchmarks/collator_bench.py --batch-size 32 --batches 200
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()

    import torch
    from transformers import DataCollatorForLanguageModeling

    from unmask.data.collator import MaskingCollator
    from unmask.data.sources import SAMPLE_ALIAS, ReadOptions, ReadReport, expand_sources, read_documents
    from unmask.data.tokenizer import load_tokenizer

    torch.set_num_threads(1)  # a collator runs in a data-loader worker, one thread each
    tokenizer = load_tokenizer("minilm-l6")
    sources = expand_sources([SAMPLE_ALIAS])
    texts = [text for _, text in read_documents(sources, ReadReport(), ReadOptions(doc_per="blank-line")) if text.strip()]
    need = args.batch_size * args.batches
    texts = (texts * (need // len(texts) + 1))[:need]
    records = [dict(r) for r in (tokenizer(t, truncation=True, max_length=args.max_length) for t in texts)]
    batches = [records[i : i + args.batch_size] for i in range(0, need, args.batch_size)]
    collators = {
        "hf DataCollatorForLanguageModeling": DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15),
        "unmask MaskingCollator (token)": MaskingCollator(tokenizer),
        "unmask MaskingCollator (whole-word)": MaskingCollator(tokenizer, strategy="whole-word"),
    }
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread; {args.batches} batches of {args.batch_size} records, up to {args.max_length} tokens"
    )
    for name, collate in collators.items():
        collate(batches[0])  # warm-up
        times = []
        for batch in batches:
            began = time.perf_counter()
            collate(batch)
            times.append(time.perf_counter() - began)
        print(f"  {name:38s} median {statistics.median(times) * 1e3:6.2f} ms a batch, mean {statistics.fmean(times) * 1e3:6.2f} ms")


if __name__ == "__main__":
    main()
