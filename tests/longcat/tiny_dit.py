"""What the model tests share: the tiny DiT config, tiny models, and a recording BSA log."""

import math

import torch
from longcat_pack.longcat.dit import LongCatVideoDiT

TINY = dict(in_channels=4, out_channels=4, hidden_size=64, depth=2, num_heads=2, caption_channels=32,
            adaln_tembed_dim=32, frequency_embedding_size=16)


def random_state(seed=0, **overrides) -> dict:
    """A state dict with official key names and random values scaled like a trained model's."""
    torch.manual_seed(seed)
    model = LongCatVideoDiT(**{**TINY, **overrides})
    return {k: torch.randn_like(v) / math.sqrt(v.shape[-1]) for k, v in model.state_dict().items()}


def tiny_dit(seed=0, **overrides) -> LongCatVideoDiT:
    """A tiny DiT with non-trivial values everywhere (norm weights, biases, adaLN), in eval mode."""
    torch.manual_seed(seed)
    model = LongCatVideoDiT(**{**TINY, **overrides})
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.ndim == 1 else 1.0 / math.sqrt(p.shape[-1])))
    return model.eval()


def latent_dit(seed=0) -> LongCatVideoDiT:
    """A tiny DiT on the 16-channel Wan latent (what the pipelines feed), torch's default init, eval mode."""
    torch.manual_seed(seed)
    return LongCatVideoDiT(hidden_size=64, depth=2, num_heads=2, caption_channels=32, adaln_tembed_dim=32,
                           frequency_embedding_size=32).eval()


class BSALog:
    """A ``transformer_options["longcat_bsa_log"]`` keeping every ``(block_index, report)`` in ``reports``."""

    def __init__(self):
        self.reports = []

    def record(self, block_index, report):
        self.reports.append((block_index, report))
