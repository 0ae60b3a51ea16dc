"""fisherd.torch.KFACPreconditioner against the real fisherd, every number checked against
an oracle the test computes independently in NumPy float64 from the same batch: the
layer inputs and unfolded patches (explicit loops), per-sample output gradients from
autograd of a sum-reduced loss (torch.autograd.grad with respect to the layer outputs,
so the preconditioner's hooks and its batch scaling play no part), and
(G (x) A + lambda I)^-1 vec([grad W | grad b]) from np.kron and a dense solve.

Tolerances (relative, norm-wise, see assert_close):
  FACTOR_RTOL 1e-12  a factor fetched with GetFisher against NumPy's from the same
                     float32 rows: the rows are bitwise those of the oracle (batches are
                     powers of two, so the preconditioner's x B undoes autograd's 1 / B
                     exactly), and float64 sums of products of float32 values differ only
                     in summation order (~rows * 1e-16).
  ROUNDED_RTOL 1e-6  a factor whose rows carry one float32 rounding the oracle's do not:
                     rows the preconditioner multiplied by B sqrt(T) (convolutions, KFC
                     scaling; not a power of two), or compressed rows (compress_rows, the
                     factorization's rows rounded to float32). Each product then errs by
                     about 2 * 2^-24 ~ 1.2e-7 relative; measured 2.5e-8 norm-wise.
  STEP_RTOL   1e-6   a natural gradient written into .grad: .grad is float32, so each
                     entry is the server's float64 result rounded once (6e-8); the
                     server's eigenbasis solve is within cond * 1e-16 ~ 1e-14 (damping
                     0.1 against factors of norm ~1), and the rows are as above.
  SAME_RTOL   1e-12  the same rows summed by one session or by two workers' streams:
                     only the order of float64 additions differs.
  KL_RTOL     1e-9   predicted KL against the closed form 1/2 eta^2 (g^T n - lambda |n|^2)
                     of docs/design.md section 1 from the server's float64 n: the server
                     sums n^T F n in the factors' eigenbases instead, equal in exact
                     arithmetic; the subtraction may cancel a few digits of 1e-16.
  SHARDED_RTOL 1e-10 .grad written through three replicas (a sharded session) against one:
                     every block's n is the same float64 computation on the same rows;
                     only g^T n, and so eta under a KL budget, is summed in another order
                     (a few ulps). Rounded to float32 for .grad that is no difference at
                     all, unless a value lies within a float64 ulp of a float32 rounding
                     boundary (odds about 2^-29 per entry); 1e-10 sits far below one
                     float32 ulp (6e-8), so it would catch any real difference.

Needs PyTorch (Debian: python3-torch); without it the module fails to import. Run as a
script (python3 test_torch.py --worker ...) it is one rank of the data-parallel test.
"""
import math
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]

FACTOR_RTOL = 1e-12
ROUNDED_RTOL = 1e-6
STEP_RTOL = 1e-6
SAME_RTOL = 1e-12
KL_RTOL = 1e-9
SHARDED_RTOL = 1e-10
DAMPING = 0.1


def assert_close(actual, expected, rtol, what=""):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    error = np.linalg.norm(actual - expected)
    scale = np.linalg.norm(expected)
    assert error <= rtol * scale, f"{what}: |actual - expected| / |expected| = {error / scale:.3g}"


# --- models, data and oracles (also used by the worker processes) ------------------------
def make_mlp(seed=0):
    import torch
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5))


def make_data(n, seed=1):
    import torch
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 12, generator=generator),
            torch.randint(0, 5, (n,), generator=generator))


def second_moment(rows):
    r = np.asarray(rows, dtype=np.float64)
    return r.T @ r / len(r)


def with_ones(rows):
    r = np.asarray(rows, dtype=np.float64)
    return np.hstack([r, np.ones((len(r), 1))])


def kron_solve(G, A, V, damping):
    """(G (x) A + lambda I)^-1 vec(V), V out x cols and vec row-major (docs/design.md
    section 7: F_b vec(V) = vec(G V A)); returns n as out x cols and G (x) A."""
    F = np.kron(G, A)
    n = np.linalg.solve(F + damping * np.eye(F.shape[0]), V.reshape(-1))
    return n.reshape(V.shape), F


def grad_matrix(layer_grads):
    """V = [grad W.view(out, -1) | grad b] in float64."""
    weight, bias = layer_grads
    V = weight.reshape(weight.shape[0], -1).double().numpy()
    if bias is not None:
        V = np.hstack([V, bias.double().numpy()[:, None]])
    return V


def saved_grads(module):
    return (module.weight.grad.detach().clone(),
            None if module.bias is None else module.bias.grad.detach().clone())


def written(module):
    return grad_matrix(saved_grads(module))


def mlp_oracle(model, x, labels):
    """[(A, G)] of both Linear layers: A from the inputs with ones appended, G from the
    per-sample gradients of the sum-reduced cross-entropy with respect to each layer's
    output (functional forward, so no hook of the model runs)."""
    import torch
    from torch.nn import functional as F
    w1, b1 = model[0].weight.detach(), model[0].bias.detach()
    w2, b2 = model[2].weight.detach(), model[2].bias.detach()
    with torch.enable_grad():
        z1 = F.linear(x, w1, b1).requires_grad_()
        h = torch.tanh(z1)
        z2 = F.linear(h, w2, b2)
        g1, g2 = torch.autograd.grad(F.cross_entropy(z2, labels, reduction="sum"), [z1, z2])
    return [(second_moment(with_ones(x)), second_moment(g1)),
            (second_moment(with_ones(h.detach())), second_moment(g2))]


def sampled_labels(model, x, seed):
    """The draw fisher="true" makes with generator=seed (see fisherd.torch)."""
    import torch
    from torch.nn import functional as F
    with torch.no_grad():
        logits = F.linear(torch.tanh(F.linear(x, model[0].weight, model[0].bias)),
                          model[2].weight, model[2].bias)
    return torch.multinomial(torch.softmax(logits, dim=1), 1,
                             generator=torch.Generator().manual_seed(seed))[:, 0]


def patches(x, kernel, stride, padding, dilation):
    """Unfolded zero-padded patches by explicit loops: (B * T, C * kh * kw) float64 rows
    ordered (sample, output row, output column), columns (channel, kernel row, kernel
    column) as weight.view(out, -1); and T."""
    x = np.asarray(x, dtype=np.float64)
    B, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    xp = np.zeros((B, C, H + 2 * ph, W + 2 * pw))
    xp[:, :, ph:ph + H, pw:pw + W] = x
    Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    rows = np.empty((B, Ho, Wo, C, kh, kw))
    for i in range(Ho):
        for j in range(Wo):
            rows[:, i, j] = xp[:, :, i * sh:i * sh + dh * (kh - 1) + 1:dh,
                               j * sw:j * sw + dw * (kw - 1) + 1:dw]
    return rows.reshape(B * Ho * Wo, C * kh * kw), Ho * Wo


# --- the data-parallel worker (this file run as a script) ---------------------------------
DP_SHARD = 8


def worker_main(rank, address, session, directory):
    """One rank: its shard's rows under worker_id rank{rank}; rank 0 creates the session
    and takes the step after a barrier (files in `directory`) that both ranks reach once
    their rows are applied; it saves its gradient and the .grad the step wrote."""
    sys.path.insert(0, str(REPO / "client" / "python"))
    import torch
    import fisherd
    import fisherd.torch
    torch.set_num_threads(1)
    directory = pathlib.Path(directory)
    model = make_mlp()
    x, y = make_data(2 * DP_SHARD)
    shard = slice(rank * DP_SHARD, (rank + 1) * DP_SHARD)

    def barrier():
        (directory / f"rank{rank}.streamed").touch()
        deadline = time.monotonic() + 60
        while not all((directory / f"rank{r}.streamed").exists() for r in (0, 1)):
            if time.monotonic() > deadline:
                raise SystemExit("barrier: the other rank never arrived")
            time.sleep(0.01)

    with fisherd.Client(address, wait_for_ready=True, timeout=30) as client:
        kfac = fisherd.torch.KFACPreconditioner(
            model, client, session, damping=DAMPING, factor_decay=0.5,
            worker_id=f"rank{rank}", create_session=(rank == 0), take_steps=(rank == 0),
            barrier=barrier)
        torch.nn.functional.cross_entropy(model(x[shard]), y[shard]).backward()
        gradient = kfac.gradient().double().numpy().copy()
        summary = kfac.step()
        if rank == 0:
            np.savez(directory / "rank0.npz", gradient=gradient,
                     natural=kfac.gradient().double().numpy(), eta=summary.eta,
                     rows=summary.rows_streamed)
        else:
            assert summary is None


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--worker":
    worker_main(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
    sys.exit(0)


# --- the tests ------------------------------------------------------------------------------
# PyTorch is a test dependency (Debian: python3-torch, scripts/install-deps.sh): without
# it this module fails to import, loudly, rather than vanishing from the run.
import torch  # noqa: E402
import fisherd  # noqa: E402  (conftest put client/python on sys.path)
import fisherd.torch as fisherd_torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

torch.set_num_threads(1)  # tiny tensors; also makes the float32 kernels' order fixed
_ids = iter(range(1, 1 << 30))


@pytest.fixture
def session_id():
    return f"torch-{os.getpid()}-{next(_ids)}"


@pytest.mark.parametrize("fisher", ["empirical", "true"])
def test_mlp_step_is_exact_kronecker_solve(client, session_id, fisher):
    model = make_mlp()
    x, y = make_data(16)  # a power of two: x B undoes autograd's 1 / B exactly
    # Any factor_decay gives this batch's factors at the first step: decay applies after it.
    kfac = fisherd_torch.KFACPreconditioner(model, client, session_id, damping=DAMPING,
                                            fisher=fisher, factor_decay=0.5, generator=1234)
    assert [b.name for b in kfac.blocks] == ["0", "2"]
    assert kfac.parameters() == [model[0].weight, model[0].bias, model[2].weight,
                                 model[2].bias]
    F.cross_entropy(model(x), y).backward()  # mean-reduced: hooks see g / 16
    grads = [saved_grads(model[0]), saved_grads(model[2])]
    summary = kfac.step()

    labels = y if fisher == "empirical" else sampled_labels(model, x, 1234)
    if fisher == "true":
        assert torch.equal(kfac.last_sampled_labels, labels)
    oracle = mlp_oracle(model, x, labels)
    quadratic = 0.0
    for layer, (A, G), module, g in zip(kfac.blocks, oracle, (model[0], model[2]), grads):
        assert_close(client.get_fisher(kfac.session, block=layer.name,
                                       factor="activations").matrix, A, FACTOR_RTOL,
                     f"{layer.name} A")
        assert_close(client.get_fisher(kfac.session, block=layer.name,
                                       factor="output_gradients").matrix, G, FACTOR_RTOL,
                     f"{layer.name} G")
        n, kron = kron_solve(G, A, grad_matrix(g), DAMPING)
        assert_close(written(module), n, STEP_RTOL, f"{fisher}: .grad of block {layer.name}")
        quadratic += n.reshape(-1) @ kron @ n.reshape(-1)
    assert summary.eta == 1.0
    assert summary.solver_method == "layered"
    assert summary.factors_updated and summary.factor_age_steps == 0
    assert summary.rows_streamed == 4 * 16  # A and G rows of two layers
    # predicted KL = 1/2 eta^2 n^T F n with the undamped G (x) A of each block.
    assert summary.predicted_kl == pytest.approx(0.5 * quadratic, rel=STEP_RTOL)
    info = client.get_session(kfac.session)
    assert info.decay == 0.5 and info.damping == DAMPING and info.step_count == 1
    assert kfac.last_timings["stream"] > 0 and kfac.timings["iterations"] == 1
    assert (kfac.last_timings["fisher_pass"] > 0) == (fisher == "true")
    kfac.remove()


def test_float32_products_round_the_step_within_their_bound(client, session_id):
    """float32_products: the server's four eigenbasis products per block run in float32.
    Against NumPy's float64 solve, n errs by the products' rounding: at most
    (2 out + 2 (in + 1) + 4) u times the spread of the damped eigenvalues max D / min D
    (u = 2^-24; core/kronecker_statistics.h), and above float64 round-off (1e-12), which
    shows the products did run in float32."""
    model = make_mlp()
    x, y = make_data(16)
    kfac = fisherd_torch.KFACPreconditioner(model, client, session_id, damping=DAMPING,
                                            factor_decay=0.5, float32_products=True,
                                            answer="full")
    assert client.get_session(kfac.session).float32_products
    F.cross_entropy(model(x), y).backward()
    grads = [saved_grads(model[0]), saved_grads(model[2])]
    summary = kfac.step()
    expected = []
    bound = 0.0
    for (A, G), g in zip(mlp_oracle(model, x, y), grads):
        n, _ = kron_solve(G, A, grad_matrix(g), DAMPING)
        expected += [n[:, :-1].reshape(-1), n[:, -1]]
        s_a, s_g = np.linalg.eigvalsh(A), np.linalg.eigvalsh(G)
        spread = (s_g.max() * s_a.max() + DAMPING) / (max(0.0, s_g.min() * s_a.min()) + DAMPING)
        bound = max(bound, (2 * G.shape[0] + 2 * A.shape[0] + 4) * 2.0 ** -24 * spread)
    expected = np.concatenate(expected)
    actual = np.asarray(summary.result.natural_gradient)
    error = np.linalg.norm(actual - expected) / np.linalg.norm(expected)
    assert 1e-12 < error < bound, (error, bound)
    kfac.remove()


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.conv1 = nn.Conv2d(3, 4, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 6, kernel_size=(2, 3), stride=(1, 2), padding=(1, 0),
                               dilation=(1, 2), bias=False)
        self.fc = nn.Linear(6 * 6 * 1, 3)

    def forward(self, x):
        h1 = torch.tanh(self.conv1(x))
        h2 = torch.tanh(self.conv2(h1))
        return self.fc(h2.flatten(1))


@pytest.mark.parametrize("conv_scaling, compress", [("kfc", False), ("average", False),
                                                    ("kfc", True)])
def test_conv2d_matches_unfold_reference(client, session_id, conv_scaling, compress):
    model = ConvNet()
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(8, 3, 9, 9, generator=generator)
    y = torch.randint(0, 3, (8,), generator=generator)
    kfac = fisherd_torch.KFACPreconditioner(model, client, session_id, damping=DAMPING,
                                            conv_scaling=conv_scaling, compress_rows=compress,
                                            factor_decay=1.0)  # W stays the row count
    assert [(b.name, b.in_features, b.out_features, b.bias) for b in kfac.blocks] == [
        ("conv1", 27, 4, True), ("conv2", 24, 6, False), ("fc", 36, 3, True)]
    F.cross_entropy(model(x), y).backward()
    grads = {name: saved_grads(getattr(model, name)) for name in ("conv1", "conv2", "fc")}
    summary = kfac.step()

    # The oracle: a functional forward, per-sample output gradients of the summed loss.
    c1, c2, fc = model.conv1, model.conv2, model.fc
    with torch.enable_grad():
        z1 = F.conv2d(x, c1.weight.detach(), c1.bias.detach(), stride=2,
                      padding=1).requires_grad_()
        h1 = torch.tanh(z1)
        z2 = F.conv2d(h1, c2.weight.detach(), None, stride=(1, 2), padding=(1, 0),
                      dilation=(1, 2))
        h2 = torch.tanh(z2)
        z3 = F.linear(h2.flatten(1), fc.weight.detach(), fc.bias.detach())
        g1, g2, g3 = torch.autograd.grad(F.cross_entropy(z3, y, reduction="sum"), [z1, z2, z3])
    p1, t1 = patches(x, (3, 3), (2, 2), (1, 1), (1, 1))
    p2, t2 = patches(h1.detach(), (2, 3), (1, 2), (1, 0), (1, 2))
    assert (t1, t2) == (25, 6)
    # The rows the blocks got are bitwise torch's unfold (with the module's parameters).
    for module, inputs, expected in ((c1, x, p1), (c2, h1.detach(), p2)):
        layer = next(layer for layer in kfac.layers if layer.module is module)
        rows, positions = layer.activation_rows(inputs)
        unfolded = F.unfold(inputs, module.kernel_size, dilation=module.dilation,
                            padding=module.padding, stride=module.stride)
        assert torch.equal(rows, unfolded.transpose(1, 2).reshape(len(rows), -1))
        assert positions == unfolded.shape[2] and np.array_equal(rows.double().numpy(),
                                                                 expected)
    # The layout the blocks rely on: patches @ weight.view(out, -1).T is the convolution.
    assert_close(p1 @ c1.weight.detach().double().reshape(4, -1).numpy().T
                 + c1.bias.detach().double().numpy(),
                 z1.detach().permute(0, 2, 3, 1).reshape(-1, 4), 1e-6, "conv1 layout")
    assert_close(p2 @ c2.weight.detach().double().reshape(6, -1).numpy().T,
                 z2.detach().permute(0, 2, 3, 1).reshape(-1, 6), 1e-6, "conv2 layout")

    def per_position(g, positions):
        rows = g.detach().double().permute(0, 2, 3, 1).reshape(-1, g.shape[1]).numpy()
        return rows * (math.sqrt(positions) if conv_scaling == "kfc" else 1.0)

    oracle = {"conv1": (second_moment(with_ones(p1)), second_moment(per_position(g1, t1))),
              "conv2": (second_moment(p2), second_moment(per_position(g2, t2))),
              "fc": (second_moment(with_ones(h2.detach().flatten(1))), second_moment(g3))}
    for name, (A, G) in oracle.items():
        # KFC scaling multiplies float32 rows by B sqrt(T) = 40 or 8 sqrt(6): not powers
        # of two, so each entry is rounded once (ROUNDED_RTOL); B alone is exact.
        g_rtol = (ROUNDED_RTOL if compress or (name != "fc" and conv_scaling == "kfc")
                  else FACTOR_RTOL)
        a_rtol = ROUNDED_RTOL if compress else FACTOR_RTOL
        assert_close(client.get_fisher(kfac.session, block=name, factor="activations").matrix,
                     A, a_rtol, f"{name} A")
        assert_close(client.get_fisher(kfac.session, block=name,
                                       factor="output_gradients").matrix, G, g_rtol,
                     f"{name} G")
        n, _ = kron_solve(G, A, grad_matrix(grads[name]), DAMPING)
        assert_close(written(getattr(model, name)), n, STEP_RTOL, f".grad of {name}")
    rows = 2 * (8 * 25 + 8 * 6 + 8)
    if compress:  # 2k + 1 or k + 1 rows per factor (k <= width) where that is fewer
        assert summary.rows_streamed < rows / 2
    else:
        assert summary.rows_streamed == rows
    # Either way each factor's W is its batch's row count, exactly (weights are powers
    # of two plus an integer remainder, exact in float32).
    stats = client.get_session(kfac.session).block_stats
    for name, count in (("conv1", 8 * 25), ("conv2", 8 * 6), ("fc", 8)):
        assert stats[name].weight_sum == count
        assert stats[name].output_gradient_weight_sum == count


def test_two_workers_equal_one_process(client, server, session_id, tmp_path):
    ranks = [subprocess.Popen([sys.executable, __file__, "--worker", str(rank), server,
                               session_id, str(tmp_path)], cwd=str(tmp_path))
             for rank in (1, 0)]  # rank 1 first: it waits for rank 0's session
    try:
        for process in ranks:
            assert process.wait(timeout=120) == 0
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
    # One process with both shards: two forward/backward passes, then one stream.
    model = make_mlp()
    x, y = make_data(2 * DP_SHARD)
    kfac = fisherd_torch.KFACPreconditioner(model, client, session_id + "-solo",
                                            damping=DAMPING, factor_decay=0.5)
    for rank in (0, 1):
        shard = slice(rank * DP_SHARD, (rank + 1) * DP_SHARD)
        F.cross_entropy(model(x[shard]), y[shard]).backward()
    assert kfac.stream_factors() == 4 * 2 * DP_SHARD

    two, one = client.get_session(session_id), client.get_session(kfac.session)
    assert sorted(two.worker_sequences) == ["rank0", "rank1"]
    assert two.step_count == 1 and two.sample_count == one.sample_count
    for block in ("0", "2"):
        for factor in ("activations", "output_gradients"):
            assert_close(client.get_fisher(session_id, block=block, factor=factor).matrix,
                         client.get_fisher(kfac.session, block=block, factor=factor).matrix,
                         SAME_RTOL, f"{block} {factor}")
    # Rank 0's step (after the barrier) is the one-process session's step of its gradient.
    saved = np.load(tmp_path / "rank0.npz")
    assert saved["rows"] == 4 * DP_SHARD and saved["eta"] == 1.0
    expected = client.step(kfac.session, saved["gradient"], skip_decay=True)
    assert_close(saved["natural"], expected.natural_gradient, STEP_RTOL, "rank 0's step")
    kfac.remove()


@pytest.mark.parametrize("make, name, kind", [
    (lambda: nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2)), "1", "LayerNorm"),
    (lambda: nn.Sequential(nn.Conv1d(2, 3, 3), nn.Flatten(), nn.Linear(6, 2)), "0", "Conv1d"),
    (lambda: nn.ModuleDict({"emb": nn.Embedding(10, 4), "out": nn.Linear(4, 2)}), "emb",
     "Embedding"),
    (lambda: nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), "0", "Conv2d"),
])
def test_unsupported_module_is_named(client, make, name, kind):
    model = make()
    with pytest.raises(fisherd_torch.UnsupportedModuleError) as error:
        fisherd_torch.KFACPreconditioner(model, client, "never-created", damping=DAMPING)
    assert error.value.module_name == name
    assert f"module {name!r} ({kind})" in str(error.value)
    assert "unsupported=\"optimizer\"" in str(error.value)
    assert "never-created" not in [s.name.split("/")[-1] for s in client.list_sessions()]


def test_unsupported_opt_out_leaves_gradients_to_the_optimizer(client, session_id):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 3))
    kfac = fisherd_torch.KFACPreconditioner(model, client, session_id, damping=DAMPING,
                                            unsupported="optimizer")
    assert [b.name for b in kfac.blocks] == ["0", "3"]
    assert kfac.other_parameters == [model[1].weight, model[1].bias]
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    F.cross_entropy(model(x), y).backward()
    norm_grad = model[1].weight.grad.clone()
    before = model[0].weight.grad.clone()
    kfac.step()
    assert torch.equal(model[1].weight.grad, norm_grad)  # the optimizer's, untouched
    assert not torch.equal(model[0].weight.grad, before)
    # layers= names the blocks; everything else is the optimizer's.
    only = fisherd_torch.KFACPreconditioner(model, client, session_id + "-only",
                                            damping=DAMPING, layers=["3"])
    assert [b.name for b in only.blocks] == ["3"]
    with pytest.raises(fisherd_torch.UnsupportedModuleError, match="'1' \\(LayerNorm\\)"):
        fisherd_torch.KFACPreconditioner(model, client, session_id + "-bad", damping=DAMPING,
                                         layers=["1"])
    kfac.remove()
    only.remove()


@pytest.mark.parametrize("fisher", ["empirical", "true"])
def test_kl_budget(client, session_id, fisher):
    budget = 1e-3
    model = make_mlp()
    x, y = make_data(16)
    kfac = fisherd_torch.KFACPreconditioner(model, client, session_id, damping=DAMPING,
                                            kl_budget=budget, fisher=fisher, generator=9,
                                            answer="full")
    F.cross_entropy(model(x), y).backward()
    g = kfac.gradient().double().numpy().copy()  # float32 values, sent exactly
    summary = kfac.step()
    n = summary.result.natural_gradient  # float64, from the server
    gtn = summary.natural_norm_sq
    assert gtn == pytest.approx(g @ n, rel=1e-12)
    # docs/design.md section 1: eta = sqrt(2c / g^T n), so 1/2 eta^2 g^T n = c ...
    assert summary.eta == pytest.approx(math.sqrt(2 * budget / gtn), rel=1e-12)
    assert 0.5 * summary.eta ** 2 * gtn == pytest.approx(budget, rel=1e-12)
    # ... predicted KL = 1/2 eta^2 (g^T n - lambda |n|^2) <= c, the undamped F's share ...
    assert summary.predicted_kl == pytest.approx(
        0.5 * summary.eta ** 2 * (gtn - DAMPING * (n @ n)), rel=KL_RTOL)
    assert 0 < summary.predicted_kl <= budget
    # ... and .grad holds eta n.
    assert_close(kfac.gradient().double().numpy(), summary.eta * n, STEP_RTOL, ".grad")
    # The same against the oracle's own G (x) A: 1/2 (eta n)^T F (eta n).
    labels = y if fisher == "empirical" else sampled_labels(model, x, 9)
    quadratic = 0.0
    for (A, G), module in zip(mlp_oracle(model, x, labels), (model[0], model[2])):
        V = written(module)
        quadratic += V.reshape(-1) @ np.kron(G, A) @ V.reshape(-1)
    assert 0.5 * quadratic == pytest.approx(summary.predicted_kl, rel=STEP_RTOL)
    kfac.remove()


@pytest.mark.parametrize("case", ["binding", "loose", "no_budget"])
def test_eta_cap_clips_the_budget_step(client, session_id, case):
    """eta = min(eta_cap, sqrt(2c / g^T n)) with a budget, eta_cap without one: the
    budget's eta is computed here from the server's n and the gradient sent."""
    budget = 1e-3
    model = make_mlp()
    x, y = make_data(16)
    probe = fisherd_torch.KFACPreconditioner(model, client, session_id + "-probe",
                                             damping=DAMPING, kl_budget=budget, answer="full")
    F.cross_entropy(model(x), y).backward()
    g = probe.gradient().double().numpy().copy()
    uncapped = probe.step()
    n = uncapped.result.natural_gradient
    budget_eta = math.sqrt(2 * budget / (g @ n))
    assert uncapped.eta == pytest.approx(budget_eta, rel=1e-12)
    probe.remove()
    cap = {"binding": budget_eta / 3, "loose": budget_eta * 3, "no_budget": 0.25}[case]
    model.zero_grad()
    kfac = fisherd_torch.KFACPreconditioner(
        model, client, session_id, damping=DAMPING, eta_cap=cap, answer="full",
        kl_budget=None if case == "no_budget" else budget)
    F.cross_entropy(model(x), y).backward()
    summary = kfac.step()
    # Same batch, same statistics: the same n; only eta differs.
    assert_close(summary.result.natural_gradient, n, STEP_RTOL, "n")
    expected = {"binding": cap, "loose": budget_eta, "no_budget": cap}[case]
    assert summary.eta == pytest.approx(expected, rel=1e-12)
    assert_close(kfac.gradient().double().numpy(), expected * n, STEP_RTOL, ".grad")
    with pytest.raises(fisherd.FisherdError, match="eta_cap must be None or a number > 0"):
        fisherd_torch.KFACPreconditioner(model, client, session_id + "-bad",
                                         damping=DAMPING, eta_cap=0)
    kfac.remove()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_update_alone_writes_the_same_grad(client, session_id, dtype):
    """The default answer (the update alone, float32 for a float32 model) writes the same
    .grad, to the bit, as the full float64 answer rounded by torch."""
    written_grads = {}
    for answer in ["auto", "full"]:
        model = make_mlp().to(dtype)
        x, y = make_data(16)
        kfac = fisherd_torch.KFACPreconditioner(model, client, f"{session_id}-{answer}",
                                                damping=DAMPING, kl_budget=1e-3,
                                                answer=answer)
        F.cross_entropy(model(x.to(dtype)), y).backward()
        summary = kfac.step()
        assert (summary.result.natural_gradient is None) == (answer == "auto")
        written_grads[answer] = kfac.gradient().numpy().copy()
        kfac.remove()
    assert written_grads["auto"].dtype == np.dtype(str(dtype).split(".")[1])
    np.testing.assert_array_equal(written_grads["auto"], written_grads["full"])
    with pytest.raises(fisherd.FisherdError, match="answer must be"):
        fisherd_torch.KFACPreconditioner(make_mlp(), client, session_id + "-bad",
                                         damping=DAMPING, answer="update")


def test_update_factors_every_and_decay(client, session_id):
    model = make_mlp()
    x, y = make_data(16)
    kfac = fisherd_torch.KFACPreconditioner(model, client, session_id, damping=DAMPING,
                                            factor_decay=0.5, update_factors_every=2)
    flags = []
    for _ in range(3):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        summary = kfac.step()
        flags.append((summary.factors_updated, summary.rows_streamed))
    assert flags == [(True, 64), (False, 0), (True, 64)]
    stats = client.get_session(kfac.session).block_stats["0"]
    assert stats.sample_count == 32
    # W: 16 rows, decay (x 0.5) at step 0, none at step 1 (skip_decay), 16 more rows,
    # decay at step 2: 0.5 (0.5 * 16 + 16) = 12 - the decay is per factor update.
    assert stats.weight_sum == pytest.approx(12.0, rel=1e-12)
    kfac.remove()


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam"])
def test_optimizers_apply_the_natural_gradient(client, session_id, optimizer):
    model = make_mlp(seed=2)
    x, y = make_data(64, seed=3)
    kfac = fisherd_torch.KFACPreconditioner(model, client, session_id, damping=1e-2,
                                            kl_budget=1e-2, fisher="true", generator=0)
    opt = (torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5) if optimizer ==
           "sgd_momentum" else torch.optim.Adam(model.parameters(), lr=0.05))
    losses = []
    for iteration in range(8):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        kfac.step()
        before = [p.detach().clone() for p in kfac.parameters()]
        opt.step()
        if iteration == 0 and optimizer == "sgd_momentum":  # p -= lr * eta n, exactly
            for p, old in zip(kfac.parameters(), before):
                assert torch.equal(p.detach(), old - 0.5 * p.grad)
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses
    assert client.get_session(kfac.session).step_count == 8
    kfac.remove()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", ["random", "rank_deficient", "constant"])
def test_compressed_rows_keep_the_batch_sums(bias, case):
    """compress_rows' factorization: sum w = N exactly, sum w r r^T (and sum w r, which
    the appended 1 turns into A's last column, when bias) those of the batch's rows."""
    generator = torch.Generator().manual_seed(4)
    rows = torch.randn(300, 7, generator=generator) + 2.0
    if case == "rank_deficient":
        rows = rows[:, :3] @ torch.randn(3, 7, generator=generator)
    elif case == "constant":
        rows = rows[:1].repeat(300, 1) * (1.0 if bias else 0.0)
    compressed, weights = fisherd_torch._compress(rows, bias)
    assert compressed.dtype == weights.dtype == torch.float32
    assert len(compressed) <= (2 * 7 + 1 if bias else 7 + 1)
    w = weights.double().numpy()
    r = compressed.double().numpy()
    exact = rows.double().numpy()
    assert w.sum() == 300 and (w > 0).all()
    augment = with_ones if bias else (lambda m: m)
    # ROUNDED_RTOL: the compressed rows are rounded to float32 once.
    assert_close((augment(r) * w[:, None]).T @ augment(r), augment(exact).T @ augment(exact),
                 ROUNDED_RTOL, f"{case} sums")


def test_the_rest_of_the_package_never_imports_torch():
    out = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import fisherd, "
         "fisherd.client, fisherd.errors; print(sorted(m for m in sys.modules if "
         "m.split('.')[0] == 'torch'))", str(REPO / "client" / "python")],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def make_deep_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 10), nn.Tanh(), nn.Linear(10, 8), nn.Tanh(),
                         nn.Linear(8, 5))


@pytest.mark.parametrize("kl_budget", [None, 1e-2])
def test_three_replicas_equal_one(client, replicas, session_id, kl_budget):
    """The same MLP, data and steps through one fisherd ([client], a list of one: today's
    single session) and through three replicas (a sharded session): .grad, eta and the
    predicted KL agree after every step, across factor updates and decay."""
    clients = [fisherd.Client(address, wait_for_ready=True, timeout=20) for address in replicas]
    models = [make_deep_mlp(), make_deep_mlp()]
    one = fisherd_torch.KFACPreconditioner(models[0], [client], session_id, damping=DAMPING,
                                           kl_budget=kl_budget, factor_decay=0.5)
    three = fisherd_torch.KFACPreconditioner(models[1], clients, session_id, damping=DAMPING,
                                             kl_budget=kl_budget, factor_decay=0.5)
    try:
        assert one.client is client and one.sharded is None
        assert three.client is None and three.sharded is not None
        # By hand: costs 13^3 + 10^3 = 3197, 11^3 + 8^3 = 1843, 9^3 + 5^3 = 854, so the
        # blocks take the shards in layout order, one each.
        assert three.sharded.assignment == (0, 1, 2)
        for k, c in enumerate(clients):
            assert [b.name for b in c.get_session(f"{session_id}.{k}-of-3").blocks] == \
                [str(2 * k)]
        optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in models]
        for iteration in range(3):
            x, y = make_data(16, seed=10 + iteration)
            summaries = []
            for model, kfac, optimizer in zip(models, (one, three), optimizers):
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                summaries.append(kfac.step())
            expected, actual = summaries
            for a, b in zip(one.parameters(), three.parameters()):
                assert_close(b.grad, a.grad, SHARDED_RTOL, f"iteration {iteration}")
            assert actual.eta == pytest.approx(expected.eta, rel=1e-12, abs=0)
            assert actual.predicted_kl == pytest.approx(expected.predicted_kl, rel=1e-12, abs=0)
            assert actual.rows_streamed == expected.rows_streamed
            assert actual.solver_method == expected.solver_method == "layered"
            if kl_budget is None:
                assert actual.eta == 1.0
            for optimizer in optimizers:
                optimizer.step()
        assert three.sharded.get_session().step_count == 3
    finally:
        one.remove()
        three.remove()
        three.sharded.delete()
        client.delete_session(one.session)
        for c in clients:
            c.close()


def test_stream_blocks_equals_one_stream_per_block(client, session_id):
    """Client.stream_blocks (which the preconditioner uses): several blocks and factors
    over one stream, numbered in the worker's one sequence space, the same sums as
    separate stream_scores calls."""
    blocks = [fisherd.Block("fc", "kronecker", in_features=3, out_features=2, bias=True),
              fisherd.Block("d", "diagonal", dim=4)]
    one = client.create_session(session_id + "-one", blocks=blocks)
    many = client.create_session(session_id + "-many", blocks=blocks)
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((7, 3)).astype(np.float32)
    grads = rng.standard_normal((5, 2)).astype(np.float32)
    diag = rng.standard_normal((6, 4)).astype(np.float32)
    weights = np.arange(1, 7, dtype=np.float32) / 4
    result = client.stream_blocks(one, [("fc", "activations", acts),
                                        ("fc", "output_gradients", grads),
                                        ("d", None, np.zeros((0, 4))),  # skipped
                                        ("d", None, diag, weights)],
                                  worker_id="w", rows_per_batch=3)
    assert (result.rows, result.batches, result.sequence, result.streams_opened) == (18, 7, 7, 1)
    client.stream_scores(many, acts, block="fc", factor="activations", worker_id="w")
    client.stream_scores(many, grads, block="fc", factor="output_gradients", worker_id="w")
    client.stream_scores(many, diag, weights=weights, block="d", worker_id="w")
    for block, factor in (("fc", "activations"), ("fc", "output_gradients"), ("d", None)):
        assert_close(client.get_fisher(one, block=block, factor=factor).matrix,
                     client.get_fisher(many, block=block, factor=factor).matrix, SAME_RTOL,
                     f"{block} {factor}")
    assert client.stream_blocks(one, [("d", None, np.zeros((0, 4)))]) is None
    with pytest.raises(fisherd.FisherdError, match="parts\\[0\\]"):
        client.stream_blocks(one, [("d", None)])
    with pytest.raises(fisherd.FisherdError, match="not finite"):
        client.stream_blocks(one, [("d", None, diag), ("d", None, np.full((1, 4), np.nan))])
    assert client.get_session(one).worker_sequences == {"w": 7}  # nothing of it was sent


@pytest.mark.parametrize("config", [
    dict(kernel_size=3, padding="same", padding_mode="reflect"),
    dict(kernel_size=(2, 4), padding="same", dilation=(2, 1)),  # asymmetric "same" padding
    dict(kernel_size=3, padding=2, padding_mode="circular", stride=(2, 1)),
    dict(kernel_size=(3, 1), padding="valid", dilation=2),
    dict(kernel_size=3, padding=1, padding_mode="replicate", bias=False),
])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's own
def test_conv_rows_reproduce_the_convolution(config, batched):
    """Activation rows times weight.view(out, -1)^T (plus bias) are the module's own
    output, position by position, for every padding mode and padding="same"
    (float32 convolution against float64 products of the same values: 1e-5)."""
    torch.manual_seed(8)
    module = nn.Conv2d(3, 5, **config)
    x = torch.randn(2, 3, 7, 8)
    if not batched:
        x = x[0]
    layer = fisherd_torch._Layer("c", module)
    rows, positions = layer.activation_rows(x)
    with torch.no_grad():  # (torch 1.13's circular padding refuses unbatched inputs)
        out = module(x if batched else x.unsqueeze(0))
    assert positions == out.shape[2] * out.shape[3]
    expected = out.permute(0, 2, 3, 1).reshape(-1, 5)
    product = rows.double() @ module.weight.detach().double().reshape(5, -1).t()
    if module.bias is not None:
        product += module.bias.detach().double()
    assert_close(product, expected.double(), 1e-5, str(config))
