"""Multi-GPU context parallel: one video's tokens split over several processes.

- ``exchange``: ``ContextParallel``, what the DiT calls on each rank (token shards, the
  all-to-alls around self-attention, the final gather);
- ``pool``: ``WorkerPool``, rank 0's side: worker processes, weight sync, forwards on every rank,
  bounded failure handling;
- ``worker``: the worker process;
- ``wire``: the commands and tensors rank 0 and a worker exchange.

The ComfyUI node (``nodes/multigpu.py``) only owns a ``WorkerPool``. Imports nothing from ComfyUI.
"""
