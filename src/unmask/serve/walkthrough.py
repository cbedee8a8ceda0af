"""The masking walkthrough: one draw on a sentence, then the model's predictions and loss at
exactly the positions it picked (the lesson of the MLM notebooks, made interactive)."""

from __future__ import annotations

import math
from dataclasses import asdict

import torch

from unmask.errors import UnmaskError
from unmask.infer import Filler, inspected_rows, mask_sentence
from unmask.runtime.hardware import autocast


@torch.no_grad()
def walkthrough(filler: Filler, text: str, seed: int, mask_prob: float, masking: str) -> dict:
    tokenizer = filler.tokenizer
    encoded, drawn = mask_sentence(tokenizer, text, seed, mask_prob, masking=masking)
    if encoded["input_ids"].shape[1] > filler.max_len:
        raise UnmaskError(f"{encoded['input_ids'].shape[1]} tokens, more than the model's {filler.max_len}")
    rows = [asdict(r) for r in inspected_rows(tokenizer, encoded, drawn)]
    picked = drawn.labels != -100
    predictions, losses = [], []
    if picked.any():
        with autocast(filler.device, filler.dtype):
            logits = filler.lm.masked_logits(
                drawn.input_ids.to(filler.device), encoded["attention_mask"].to(filler.device), picked.to(filler.device)
            )
        probabilities = logits.float().softmax(-1).cpu()
        for k, position in enumerate(picked[0].nonzero()[:, 0].tolist()):
            true_id = int(drawn.labels[0, position])
            best = int(probabilities[k].argmax())
            p_true = float(probabilities[k, true_id])
            losses.append(-math.log(max(p_true, 1e-45)))
            predictions.append(
                {
                    "position": position,
                    "true": tokenizer.convert_ids_to_tokens(true_id),
                    "predicted": tokenizer.convert_ids_to_tokens(best),
                    "predicted_probability": float(probabilities[k, best]),
                    "true_probability": p_true,
                    "loss": losses[-1],
                    "right": best == true_id,
                }
            )
    maskable = sum(not r["special"] for r in rows)
    return {
        "rows": rows,
        "picked": len(predictions),
        "maskable": maskable,
        "predictions": predictions,
        "loss": sum(losses) / len(losses) if losses else None,
        "mask_token": tokenizer.mask_token,
    }
