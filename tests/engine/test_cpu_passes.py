"""DeepyTorch's CPU graph pass (engine/backends/cpu_passes.py): same results, the bias moves out of the GEMM, and it
only goes to DeepyTorch's own inductor compiles on CPU (torch's global config is untouched)."""
import torch

from comfyui_deepytorch.engine import backends
from comfyui_deepytorch.engine.backends import CompileOptions, cpu_passes


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(32, 64)
        self.fc2 = torch.nn.Linear(64, 32)

    def forward(self, x):
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(x), approximate="tanh"))


def test_rewrite_turns_addmm_into_mm_plus_bias_with_the_same_result():
    gm = torch.fx.symbolic_trace(lambda b, x, w: torch.ops.aten.addmm.default(b, x, w))
    b, x, w = torch.randn(8), torch.randn(4, 16), torch.randn(16, 8)
    ref = gm(b, x, w)
    assert cpu_passes.unfuse_bias_addmm(gm.graph) == 1
    gm.recompile()
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets == [torch.ops.aten.mm.default, torch.ops.aten.add.Tensor]
    torch.testing.assert_close(gm(b, x, w), ref, rtol=1e-6, atol=1e-6)


def test_addmm_with_alpha_or_beta_is_left_alone():
    gm = torch.fx.symbolic_trace(lambda b, x, w: torch.ops.aten.addmm.default(b, x, w, beta=0.5))
    assert cpu_passes.unfuse_bias_addmm(gm.graph) == 0
    assert [n.target for n in gm.graph.nodes if n.op == "call_function"] == [torch.ops.aten.addmm.default]


def test_inductor_cpu_compile_uses_mm_and_matches_eager():
    from torch._inductor.utils import run_and_get_code
    torch._dynamo.reset()
    mlp = MLP().eval()
    x = torch.randn(2, 128, 32)
    backend = backends.get_backend("inductor", "cpu")
    assert backend.cpu_passes()
    fn = backend.compile(mlp, CompileOptions())
    with torch.no_grad(), torch._inductor.config.patch(fx_graph_cache=False):
        out, codes = run_and_get_code(fn, x)
        ref = mlp(x)
    code = "\n".join(codes)
    assert "extern_kernels.mm(" in code and "extern_kernels.addmm(" not in code
    assert "cpp_fused_addmm_gelu" in code        # the bias is added in the GELU kernel
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch._inductor.config.post_grad_custom_post_pass is None   # nothing global


def test_modes_keep_their_own_options_and_cuda_gets_no_pass():
    opts = cpu_passes.inductor_options("max-autotune-no-cudagraphs")
    assert opts["max_autotune"] is True and isinstance(opts["post_grad_custom_post_pass"], cpu_passes.UnfuseBiasAddmm)
    assert set(cpu_passes.inductor_options("default")) == {"post_grad_custom_post_pass"}
    assert opts["post_grad_custom_post_pass"].uuid() == cpu_passes.VERSION   # cacheable: a stable key
    assert not backends.get_backend("inductor", "cuda").cpu_passes()
