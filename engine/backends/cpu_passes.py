"""Inductor graph passes DeepyTorch adds to ITS OWN compiles on CPU (given through torch.compile(options=...), never
set in torch's global config).

unfuse_bias_addmm: `addmm(bias, x, w)` -> `mm(x, w) + bias`. On CPU inductor keeps a linear layer's addmm, whose
bias is first broadcast-copied into the whole output (a memory-bound pass over every activation: 11% of a
profiled FLUX step on 2 cores, steps ~4% faster without it); as a separate add, inductor fuses the bias into the
pointwise kernel that follows (GELU, the residual, q/k norm). Inductor makes this choice itself on GPU
(post_grad `should_prefer_unfused_addmm`).
"""
import torch

try:
    from torch._inductor.custom_graph_pass import CustomGraphPass
except ImportError:  # pragma: no cover - torch without custom graph passes: no pass, same results
    CustomGraphPass = None

VERSION = "deepytorch-unfuse-bias-addmm-1"   # part of inductor's cache key: bump when the rewrite changes


def unfuse_bias_addmm(graph):
    """Rewrite every plain addmm (alpha = beta = 1) of an FX graph; returns how many."""
    aten = torch.ops.aten
    rewritten = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.addmm.default:
            continue
        if node.kwargs or len(node.args) != 3:   # alpha / beta given: leave it alone
            continue
        bias, x, w = node.args
        with graph.inserting_before(node):
            mm = graph.call_function(aten.mm.default, (x, w))
            add = graph.call_function(aten.add.Tensor, (mm, bias))
        for new in (mm, add):   # same shape, dtype and device as the addmm's result
            new.meta.update(node.meta)
        node.replace_all_uses_with(add)
        graph.erase_node(node)
        rewritten += 1
    return rewritten


if CustomGraphPass is not None:
    class UnfuseBiasAddmm(CustomGraphPass):
        def __call__(self, graph):
            unfuse_bias_addmm(graph)

        def uuid(self):
            return VERSION
else:  # pragma: no cover
    UnfuseBiasAddmm = None


def inductor_options(mode="default"):
    """torch.compile `options` for an inductor compile on CPU in `mode` (torch takes mode OR options, so the mode's
    own options are merged in), or None when this torch cannot take the pass."""
    if UnfuseBiasAddmm is None:
        return None
    try:
        options = dict(torch._inductor.list_mode_options(mode))
    except Exception:  # pragma: no cover - unknown mode / torch internals moved: compile with the plain mode
        return None
    options["post_grad_custom_post_pass"] = UnfuseBiasAddmm()
    return options
