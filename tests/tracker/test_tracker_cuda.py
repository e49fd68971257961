"""The tracker on a GPU: no host sync on unlogged steps, one host copy per logged step, AMP with a real CUDA
GradScaler, low-precision gradients. Skipped without CUDA (CI has none); run on a lent GPU machine by
benchmarks/device_check.sh. Oracles: torch's own norms on the same gradients, and the same loop without AMP.
"""

import warnings

import pytest
import torch
from sqlite_rows import rows as _rows
from torch import nn

from tracker import GradTracker
from tracker.norms import NormPlan

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
CUDA = torch.device("cuda")


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4)).to(
        CUDA, dtype
    )


def _data(n, dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    return [
        (
            torch.randn(32, 16, generator=g).to(CUDA, dtype) * 4,
            torch.randint(0, 4, (32,), generator=g).to(CUDA),
        )
        for _ in range(n)
    ]


def _backward(model, x, y):
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x).float(), y).backward()


def test_the_cuda_norm_read_is_the_fused_kernel_not_the_cpu_dot_path():
    tensors = [torch.randn(300, 300, device=CUDA), torch.randn(7, device=CUDA)]
    plan = NormPlan.for_tensors(tensors)
    assert plan.splits == (None,)
    expected = torch.stack([torch.linalg.vector_norm(t) for t in tensors])
    torch.testing.assert_close(plan.apply(tensors), expected)


@pytest.mark.parametrize("spec", ["none", "norm:1.0", "layer:0.5", "agc:0.05", "zclip:2.5,warmup=2"])
def test_unlogged_steps_never_synchronize(db_path, spec):
    model, data = _model(), _data(8)
    with GradTracker(model, db=db_path, clip=spec, every=4) as tracker:
        for step, (x, y) in enumerate(data):
            _backward(model, x, y)
            torch.cuda.synchronize()
            if step % 4:  # not logged: any copy to the host or stream sync raises here
                torch.cuda.set_sync_debug_mode("error")
            try:
                stats = tracker.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
            assert stats.logged == (step % 4 == 0)
    assert [s for (s,) in _rows(db_path, "SELECT step FROM steps ORDER BY step")] == [0, 4]


def test_a_logged_step_copies_to_the_host_once(db_path):
    model, data = _model(), _data(3)
    with GradTracker(model, db=db_path, clip="norm:1.0") as tracker:
        for x, y in data:
            _backward(model, x, y)
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    tracker.step(loss=torch.ones((), device=CUDA))
            finally:
                torch.cuda.set_sync_debug_mode("default")
            syncs = [w for w in caught if "synchroniz" in str(w.message)]
            assert len(syncs) == 1, [str(w.message) for w in syncs]


def test_norms_match_torch_on_the_gpu_also_in_bfloat16(db_path):
    for dtype, rel in [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)]:
        model, (x, y) = _model(dtype), _data(1, dtype)[0]
        _backward(model, x, y)
        expected = [torch.linalg.vector_norm(p.grad.double()).item() for p in model.parameters()]
        with GradTracker(model, db=db_path, run=str(dtype)) as tracker:
            stats = tracker.step()
            run = tracker.run_id
        got = [
            n
            for (n,) in _rows(db_path, f"SELECT norm FROM grad_norms WHERE run_id = {run} ORDER BY layer_id")
        ]
        assert got == pytest.approx(expected, rel=rel)
        assert stats.total_norm == pytest.approx(sum(e * e for e in expected) ** 0.5, rel=rel)


def test_cuda_grad_scaler_steps_are_measured_unscaled_and_its_skips_recorded(db_path):
    data = _data(4)
    # Oracle: the same loop without AMP or scaling (fp32 throughout; the scale is a power of two).
    oracle = _model()
    opt_o = torch.optim.SGD(oracle.parameters(), lr=0.2)
    expected = []
    for step, (x, y) in enumerate(data):
        _backward(oracle, x, y)
        expected.append(torch.nn.utils.get_total_norm([p.grad for p in oracle.parameters()]).item())
        if step != 2:
            opt_o.step()

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10)
    with GradTracker(model, db=db_path) as tracker:
        tracker.attach(opt, scaler=scaler)
        for step, (x, y) in enumerate(data):
            opt.zero_grad(set_to_none=True)
            scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
            if step == 2:  # what an fp16 overflow does: the scaler must skip this step
                model[0].weight.grad[1, 1] = float("inf")
            scaler.step(opt)
            scaler.update()
    assert scaler.get_scale() == 2.0**9
    steps = _rows(db_path, "SELECT step, total_norm, skipped FROM steps ORDER BY step")
    assert [(s, k) for s, _, k in steps] == [(0, 0), (1, 0), (2, 1), (3, 0)]
    finite = [(s, n) for s, n, k in steps if not k]
    assert [n for _, n in finite] == pytest.approx([expected[s] for s, _ in finite], rel=1e-5)
    for p, q in zip(model.parameters(), oracle.parameters(), strict=True):
        torch.testing.assert_close(p, q)
