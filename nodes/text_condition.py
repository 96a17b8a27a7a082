"""ComfyUI's umT5 CONDITIONING → the DiT's text inputs (context padded to 512 tokens, and its mask).

Imports no ComfyUI (the CPU tests cover it without a ComfyUI tree).
"""

import torch

# umT5 sequence length the official pipeline pads every prompt to.
TEXT_TOKENS = 512


def pad_text_condition(context: torch.Tensor, tokens: int = TEXT_TOKENS):
    """ComfyUI umT5 output -> the DiT's (context, mask), as the official pipeline gives them.

    context: ``[B, L, C]`` from ``CLIPTextEncode`` with CLIP type ``wan``; ComfyUI pads the
    prompt to at least 512 tokens and zeroes the padded positions, and carries no mask.
    Returns ``([B, tokens, C], [B, tokens])``: real tokens are the non-zero rows (a real umT5
    state is never exactly zero), the rest is zero-padded or cut to ``tokens`` (the official
    tokenizer truncates at 512). The mask is 1.0 for real tokens; with ``text_tokens_zero_pad``
    the DiT zeroes the masked positions after its caption MLP and attends to all 512.
    """
    if context.ndim != 3:
        raise ValueError(f"context must be [B, L, C], got shape {tuple(context.shape)}")
    length = context.shape[1]
    if length >= tokens:
        context = context[:, :tokens]
    else:
        context = torch.nn.functional.pad(context, (0, 0, 0, tokens - length))
    mask = (context != 0).any(dim=-1).to(context.dtype)
    return context, mask
