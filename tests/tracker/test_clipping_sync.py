"""clip_ never copies a device value to the host: no .item(), no Python `if` on a tensor.

On CPU this is checked by making every Python-level tensor-to-host conversion raise while clip_ runs; on CUDA
(marked gpu) by torch's own sync debug mode, which catches syncs made inside C++ as well.
"""

import pytest
import torch

from tracker.clipping import parse_clip

SPECS = [
    "none",
    "value:0.5",
    "norm:1.0",
    "norm:1.0@p=inf",
    "layer:0.5",
    "agc:0.01,exclude=b",
    "autoclip:10",
    "autoclip:10,window=5",
    "zclip:2.5,warmup=3",
    "random:0.5-2",
    "norm:cosine(2,0.5,10)+noise(0.01)",
]

HOST_CONVERSIONS = ["item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"]


def model_step(device, t):
    g = torch.Generator().manual_seed(t)
    names = ["a.weight", "a.bias", "b.weight"]
    params = [torch.nn.Parameter(torch.randn(s, generator=g).to(device)) for s in [(16, 8), (16,), (4, 16)]]
    for p in params:
        p.grad = (torch.randn(p.shape, generator=g) * (1 + 10 * (t == 6))).to(device)
    grads = [p.grad for p in params]
    norms = torch.stack([torch.linalg.vector_norm(x) for x in grads])
    return names, params, grads, norms, torch.linalg.vector_norm(norms)


def forbid_host_copies(monkeypatch):
    def refuse(name):
        def method(self, *args, **kwargs):
            raise AssertionError(f"host sync inside clip_: Tensor.{name}")

        return method

    for name in HOST_CONVERSIONS:
        monkeypatch.setattr(torch.Tensor, name, refuse(name))


@pytest.mark.parametrize("spec", SPECS)
def test_clip_makes_no_host_conversion(spec, monkeypatch):
    strategy = parse_clip(spec)
    steps = [model_step("cpu", t) for t in range(8)]
    with monkeypatch.context() as m:
        forbid_host_copies(m)
        results = [
            strategy.clip_(grads, norms, total, params=params, names=names, step=t)
            for t, (names, params, grads, norms, total) in enumerate(steps)
        ]
    for r in results:
        for field in (r.threshold, r.coef, r.total_norm_after, r.clipped, r.n_clipped):
            assert isinstance(field, torch.Tensor) and field.dim() == 0
        assert r.clipped.dtype == torch.bool and r.n_clipped.dtype == torch.int64


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("spec", SPECS)
def test_clip_does_not_synchronize_cuda(spec):
    strategy = parse_clip(spec)
    steps = [model_step("cuda", t) for t in range(8)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        results = [
            strategy.clip_(grads, norms, total, params=params, names=names, step=t)
            for t, (names, params, grads, norms, total) in enumerate(steps)
        ]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(r.coef.device.type == "cuda" for r in results)
