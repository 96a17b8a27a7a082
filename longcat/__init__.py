"""LongCat-Video model package: DiT, weights, LoRA, schedules, guidance, pipelines.

No ComfyUI import anywhere in this package: ComfyUI's ``operations`` and dense attention
function are injected by the caller (see ``nodes/``). Kernels come from ``..kernels``.
"""
