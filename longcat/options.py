"""Every ``transformer_options`` key the pack reads or writes, in one place.

ComfyUI hands a MODEL's ``transformer_options`` dict to the diffusion model on every call; nodes
put their objects there and the DiT and the adapter read them. Use these names; never spell a
key out elsewhere. Imports nothing.
"""

# Ours (set by our nodes / sampler, read by the DiT or the ComfyUI adapter):
BSA_OPTIONS_KEY = "longcat_bsa"  # a bsa_settings.BSASettings: self-attention goes block-sparse
BSA_LOG_KEY = "longcat_bsa_log"  # an object with record(block_index, report), per sampling run
CP_OPTIONS_KEY = "longcat_context_parallel"  # a parallel.ContextParallel: this rank's token shard
RAW_OUTPUT_KEY = "longcat_raw_output"  # True: the adapter takes 0..1000 timesteps, returns the raw DiT output
MULTI_GPU_OPTIONS_KEY = "longcat_multi_gpu"  # the Multi-GPU node's runner: the DiT call runs on every GPU
TOKEN_CHUNK_KEY = "longcat_token_chunk"  # int: tokens per slice of the DiT's per-token work, 0 = off

# ComfyUI's (written by its samplers and patch nodes, or by us in their format):
SIGMAS_KEY = "sigmas"  # the current sigma(s), a tensor; the DiT reads the first for BSA's step window
PATCHES_REPLACE_KEY = "patches_replace"  # {"dit": {("double_block", i): patch}} block replacement patches
BLOCK_INDEX_KEY = "block_index"  # set by the DiT's block loop for patches
ATTENTION_OVERRIDE_KEY = "optimized_attention_override"  # an attention-override patch
