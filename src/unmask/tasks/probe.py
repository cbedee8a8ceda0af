"""`unmask probe`: how much of a task a frozen encoder already knows, in seconds.

Each example is encoded once by the model's encoder (no gradients, batches sorted by
length): a text or a pair becomes one vector (the mean of its last hidden states over the
attention mask, or [CLS]), a tagged sentence one vector per word (its first sub-token).
Then a linear model from scikit-learn is fitted on the training vectors, standardised:
logistic regression for classes, ridge regression for numbers. The probe's scores are
those of `unmask finetune` (same metrics); it changes nothing in the model, so a run's
checkpoints can be compared on it cheaply, during training too.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from unmask.config import ProbeConfig
from unmask.data.batching import padded, sorted_batches
from unmask.errors import optional_import
from unmask.infer import LoadedModel
from unmask.runtime.hardware import autocast
from unmask.tasks.labelled import Encoded, Examples, TaskData, compute_metrics, load_task


@torch.no_grad()
def encoder_features(loaded: LoadedModel, encoded: Encoded, pooling: str, batch_size: int) -> list[np.ndarray]:
    """Per example: a (H,) vector, or (token classification) a (words, H) array of each word's first sub-token."""
    encoder = loaded.lm.model.base_model
    dtype = loaded.dtype
    pad = loaded.vocab.pad_id
    found: list[np.ndarray | None] = [None] * len(encoded.input_ids)
    for indices in sorted_batches(encoded.lengths(), batch_size):
        input_ids, attention_mask = padded([encoded.input_ids[i] for i in indices], pad)
        with autocast(loaded.device, dtype):
            hidden = encoder(input_ids=input_ids.to(loaded.device), attention_mask=attention_mask.to(loaded.device))[0].float()
        if encoded.word_ids is None:
            if pooling == "cls":
                pooled = hidden[:, 0]
            else:
                weights = attention_mask.to(hidden.device, hidden.dtype)[..., None]
                pooled = (hidden * weights).sum(1) / weights.sum(1)
            for row, index in enumerate(indices.tolist()):
                found[index] = pooled[row].cpu().numpy()
            continue
        for row, index in enumerate(indices.tolist()):
            words = encoded.word_ids[index]
            firsts = [p for p, w in enumerate(words) if w is not None and (p == 0 or words[p - 1] != w)]
            found[index] = hidden[row, firsts].cpu().numpy()
    return found


def _word_rows(features: list[np.ndarray], encoded: Encoded, examples: Examples, task: TaskData) -> tuple[np.ndarray, np.ndarray]:
    """Token classification: one row per word that survived truncation, with its tag id."""
    rows, tags = [], []
    for vectors, words, truth in zip(features, encoded.word_ids, examples.labels):
        kept = sorted({w for w in words if w is not None})
        rows.extend(vectors[: len(kept)])
        tags.extend(task.labels.id_of(truth[w]) for w in kept)
    return np.asarray(rows), np.asarray(tags)


def probe(config: ProbeConfig, echo: Callable[[str], None] = print) -> dict:
    """Fit the probe on the training split, score every evaluation split; returns the result."""
    linear = optional_import("sklearn.linear_model", "a probe", "finetune")
    pipeline = optional_import("sklearn.pipeline", "a probe", "finetune")
    preprocessing = optional_import("sklearn.preprocessing", "a probe", "finetune")
    started = time.perf_counter()
    loaded = LoadedModel(
        config.model,
        device=config.device,
        trust_remote_code=config.trust_remote_code,
        echo=echo,
        step=config.step,
        precision=config.precision,
    )
    task = load_task(config, loaded.tokenizer, echo)
    spec = task.spec
    train = encoder_features(loaded, task.train_encoded, config.pooling, config.batch_size)
    if spec.is_tokens:
        x, y = _word_rows(train, task.train_encoded, task.train, task)
    else:
        x = np.stack(train)
        y = np.asarray(task.train.labels if spec.is_regression else [task.labels.id_of(v) for v in task.train.labels])
    if spec.is_regression:
        model = linear.Ridge(alpha=config.regularization)
    else:
        model = linear.LogisticRegression(C=config.regularization, max_iter=2000)
    fitted = pipeline.make_pipeline(preprocessing.StandardScaler(), model).fit(x, y)
    splits = {}
    for name, (examples, encoded) in task.evals.items():
        features = encoder_features(loaded, encoded, config.pooling, config.batch_size)
        if spec.is_tokens:
            predictions = []
            for vectors, truth in zip(features, examples.labels):
                guessed = fitted.predict(vectors).tolist() if len(vectors) else []
                predictions.append(guessed + [task.fill] * (len(truth) - len(guessed)))  # words cut off by truncation
            references = [[task.labels.id_of(t) for t in tags] for tags in examples.labels]
        else:
            predictions = fitted.predict(np.stack(features)).tolist()
            references = examples.labels if spec.is_regression else [task.labels.id_of(v) for v in examples.labels]
        splits[name] = compute_metrics(spec, predictions, references, task.labels)
    names = list(next(iter(splits.values())))
    metrics = {n: float(np.mean([s[n] for s in splits.values()])) for n in names}
    result = {
        "task": spec.kind,
        "probe": "ridge" if spec.is_regression else "logistic",
        "model": config.model,
        "step": config.step,
        "metrics": metrics,
        "score_metric": spec.metrics[0],
        "score": metrics[spec.metrics[0]],
        "train_examples": len(task.train),
        "seconds": time.perf_counter() - started,
    }
    if len(splits) > 1:
        result["splits"] = splits
    return result
