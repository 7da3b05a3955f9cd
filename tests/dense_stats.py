"""Reference statistics from one plain forward of the dense model, to test calibrated methods against."""

import torch


def squared_input_sums(model, linears: dict, windows: torch.Tensor) -> dict:
    """For each ``{name: linear}``, the per-input-feature sum of ``x_j^2`` over every token of ``windows``."""
    sums, handles = {}, []
    for name, linear in linears.items():
        def hook(_m, args, _out, name=name):
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            sums[name] = sums.get(name, 0) + x.pow(2).sum(0)
        handles.append(linear.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(input_ids=windows, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return sums
