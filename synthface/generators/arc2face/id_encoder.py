"""Arc2Face's identity conditioning on a stock `CLIPTextModel`, through public transformers API only.

The fixed prompt "photo of a id person" is tokenised; the input embedding of the `id` token is
replaced, row by row, by that identity's unit ID vector zero-padded to the hidden size; the encoder
then runs unchanged (position embeddings, causal layers, final layer norm). The substitution is a
forward hook on `get_input_embeddings()`, installed only for the duration of one call, so the
encoder's own forward (attention backend, causal mask, offload hooks) is what runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from synthface.errors import InvalidInputError

ARC2FACE_PROMPT = "photo of a id person"
ID_WORD = "id"


def id_token_id(tokenizer, word: str = ID_WORD) -> int:
    """The vocabulary id of `word`, which must be a single token (as `id` is for CLIP's BPE)."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise InvalidInputError(
            f"The tokenizer splits the placeholder word {word!r} into {len(ids)} tokens; Arc2Face "
            "conditioning needs it to be one token. Use the stock SD 1.5 CLIP tokenizer."
        )
    return int(ids[0])


def tokenize(tokenizer, prompt: str, count: int) -> torch.Tensor:
    """`count` copies of `prompt`, padded to the tokenizer's max length, as (count, L) int64."""
    batch = tokenizer(
        [prompt] * count,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return batch.input_ids


def pad_to_hidden(vectors: torch.Tensor, hidden_size: int) -> torch.Tensor:
    """Zero-pad (N, D) vectors to (N, hidden_size), the token-embedding width."""
    n, d = vectors.shape
    if d > hidden_size:
        raise InvalidInputError(
            f"ID vectors have {d} dimensions but the text encoder's hidden size is {hidden_size}; "
            "they cannot replace a token embedding."
        )
    return torch.nn.functional.pad(vectors, (0, hidden_size - d))


@contextmanager
def substituted_token(embedding: nn.Module, token_mask: torch.Tensor, rows: torch.Tensor) -> Iterator[None]:
    """While active, `embedding`'s output at `token_mask` (N, L) positions becomes `rows` (N, H)."""

    def hook(module, args, output):
        mask = token_mask.to(output.device)[..., None]
        return torch.where(mask, rows.to(output.device, output.dtype)[:, None, :], output)

    handle = embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def encode_ids(text_encoder, tokenizer, unit_ids: torch.Tensor, prompt: str = ARC2FACE_PROMPT,
               device: torch.device | None = None) -> torch.Tensor:
    """Prompt embeddings (N, L, H) for unit ID vectors (N, D): `id` row substituted per identity.

    `device` is where the inputs go (the pipeline's execution device under CPU offload).
    """
    n = unit_ids.shape[0]
    device = device or text_encoder.device
    input_ids = tokenize(tokenizer, prompt, n)
    token_mask = input_ids == id_token_id(tokenizer)
    if not bool((token_mask.sum(dim=1) == 1).all()):
        raise InvalidInputError(
            f"The prompt {prompt!r} must contain the placeholder word {ID_WORD!r} exactly once."
        )
    rows = pad_to_hidden(unit_ids, text_encoder.config.hidden_size)
    with substituted_token(text_encoder.get_input_embeddings(), token_mask, rows):
        out = text_encoder(input_ids.to(device))
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def encode_prompt(text_encoder, tokenizer, prompt: str, count: int = 1, device: torch.device | None = None) -> torch.Tensor:
    """Plain prompt embeddings (count, L, H), e.g. the empty prompt for classifier-free guidance."""
    out = text_encoder(tokenize(tokenizer, prompt, count).to(device or text_encoder.device))
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
