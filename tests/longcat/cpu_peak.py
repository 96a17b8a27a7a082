"""Peak bytes of live tensors a call allocates on the CPU, from the profiler's allocator events.

``torch.profiler`` with ``profile_memory=True`` records every CPU allocation and free (the
``[memory]`` events, +bytes / −bytes) in order; the running sum's maximum is the call's peak above
what was alive before it. It counts tensors (the allocator's requests), not allocator caching or
fragmentation, which the CPU allocator does not do anyway.
"""

import torch
from torch.profiler import ProfilerActivity, profile


def peak_bytes(fn) -> int:
    """Peak of live CPU bytes allocated during ``fn()`` above the bytes alive before it."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
        del result
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak
