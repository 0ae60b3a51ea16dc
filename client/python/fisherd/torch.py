"""fisherd.torch: K-FAC natural gradient for PyTorch models, computed by fisherd.

    import fisherd, fisherd.torch
    client = fisherd.Client("127.0.0.1:50051")
    kfac = fisherd.torch.KFACPreconditioner(model, client, "job-1", damping=1e-3,
                                            kl_budget=1e-3)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    for x, y in loader:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)   # mean over the batch
        loss.backward()
        summary = kfac.step()      # .grad of every preconditioned parameter := eta * n
        optimizer.step()           # p -= lr * eta * n (momentum, Adam: as with any .grad)

This module imports torch; the rest of the `fisherd` package never does. It needs only
the public fisherd.Client (see docs/design.md section 7 for the layered sessions it uses),
and fisherd.ShardedLayeredSession when given several replicas.

What is preconditioned. Every nn.Linear and every nn.Conv2d (groups=1, any stride,
padding, dilation or padding_mode) whose weight trains becomes one Kronecker block of a
layered session, named by the module's path in model.named_modules() ("features.0"; the
model itself, when it is a Linear or Conv2d, is "root"), with its bias when it has one.
The session's decay is factor_decay and its default damping `damping` (exact damping:
the step is (G (x) A + lambda I)^-1 g per block). `layers` (module paths) restricts the
blocks to those modules, which must be Linear or Conv2d.

Other parameters. Normalization layers (BatchNorm, LayerNorm, GroupNorm), embeddings,
grouped or 1-D/3-D convolutions, and parameters a module owns directly are not given
blocks: they are left to the optimizer, which applies their plain gradient. Why not
diagonal blocks from per-sample squared gradients: (1) BatchNorm in training mode
couples the samples of a batch through its statistics, so its per-sample gradients are
not the per-sample scores the Fisher is made of; (2) those parameters are few (O(width)
per layer against O(width^2) for the weights) and near-diagonal already, so a diagonal
metric buys little while per-sample gradients cost a second backward machinery (one
module type at a time); (3) an embedding's per-sample squared gradients are as large as
the table. This is an explicit opt-out, never a silent one: by default a module with
trainable parameters that gets no block raises UnsupportedModuleError naming the module
and its type. Pass unsupported="optimizer" to accept that their plain gradients go to
the optimizer (KFACPreconditioner.other_parameters lists them), or list the modules to
precondition in `layers` (everything else is then the optimizer's). Note that eta (a
KL budget) scales only the preconditioned blocks.

Rows, and their scaling (docs/design.md section 7, "Which rows a worker sends").
A forward hook on each block's module keeps the module's input of every forward run
with gradients enabled during an iteration that updates the factors (every
update_factors_every-th call of step(), the first included); a hook on the module's
output keeps the gradient with respect to that output. step() (or stream_factors())
turns them into rows, streams all blocks' rows over one StreamScores call, and forgets
them. A forward whose backward never ran is dropped (run evaluation under no_grad()).
- Linear: activation rows are the inputs, output-gradient rows the gradients of the
  outputs; an input of shape (batch, ..., in) gives batch * T rows, T = the positions
  per sample (the product of the middle dimensions, 1 for a plain (batch, in) input).
- Conv2d (KFC, Grosse & Martens 2016): activation rows are the unfolded input patches,
  torch.nn.functional.unfold with the module's kernel_size, dilation, padding and stride
  (non-zero padding modes and padding="same" pad as the module does), one row of
  in_channels * kh * kw values per output position, in the column order of
  weight.view(out_channels, -1) (bitwise unfold's rows; formed from one strided view,
  which is faster); output-gradient rows are the per-position gradients of the output,
  out_channels values each. T = the output positions per sample.
- Per-sample scaling: rows must be the gradient of each sample's own log-likelihood.
  A mean-reduced loss over a batch of B samples hands autograd's hooks g / B, so with
  loss_reduction="mean" (the default) each output-gradient row is multiplied by B, the
  leading dimension of the module's input in that forward (each micro-batch of a
  gradient-accumulation loop by its own B). loss_reduction="sum" multiplies by 1; a
  number multiplies by that number (e.g. B * T for a loss averaged over B * T tokens).
- Positions (conv_scaling): "kfc" (the default) multiplies every output-gradient row by
  sqrt(T) on top of that. Sending all positions' rows with weight 1 makes A and G
  averages over positions, so G (x) A is the per-sample Fisher divided by T; the sqrt(T)
  in G's rows (weights cannot do it: each factor is normalized by its own W) restores
  KFC's own scaling, T E_t[g g^T] (x) E_t[a a^T], the same units as a Linear block's
  (T = 1), which matters because all blocks share one eta (KL budget). "average" sends
  the rows unscaled (G (x) A = the per-position average), as some K-FAC codes do.

Compressed rows (compress_rows). A convolution sends B * T rows per factor per batch
(e.g. 131072 rows of 576 values, 302 MB, for a 64-channel 3x3 layer on 32x32 images at
B = 128), which costs the wire and the server's ingest. What a factor takes from a batch
is only its sums (W += N, M += R^T R, and for the appended 1 of a bias sum r), so a
worker may send any rows with weights that have the same sums. _compress sends those of
an eigendecomposition of the batch's own Gram matrix: 2k + 1 rows (bias; k <= width the
rank of the centered Gram matrix) or k + 1 rows, with weights a power of two plus one
integer remainder, so that sum w = N exactly and the sums are the batch's in exact
arithmetic. Numerically: the Gram matrix is formed in float64 from the float32 rows
(products exact, sums float64, as the server's), and the new rows are rounded to float32
for the wire, so each factor entry errs by about 1e-7 relative (tests measure 2.5e-8),
like a session's float32_products; uncompressed rows give the float64 sums of the
float32 rows themselves. The cost moves from the server (dsyrk, half the products) to
the worker (NumPy's float64 dsyrk on chunks, then an eigh of width x width): measured
with the server on the same two cores, 65536 rows of width 9 / 27 / 64 / 128 / 288 / 576
stream in 65 / 71 / 83 / 141 / 233 / 518 ms and compress (Gram, eigh, then stream) in
9 / 18 / 46 / 84 / 214 / 772 ms. compress_rows="auto" (the default) therefore
compresses a factor's rows of an iteration only when they are at least 4 times the
compressed form, at least 1 MiB, and at most 256 wide: the patches of early
convolutions (in_channels * kh * kw up to 256), the output gradients of convolutions of
up to 256 channels; never a Linear layer of a few hundred samples. True compresses
whenever it saves rows: the right choice when the server is across a network (151 MB of
width-576 rows take 1.2 s on 1 Gb/s), False never.

Fisher. fisher="empirical" uses the output gradients of the training backward pass
(the labels of the data). fisher="true" uses the model's own predictive distribution:
after every capturing forward of the model (a hook on the model itself) it draws
    labels = torch.multinomial(torch.softmax(logits.detach(), dim=1), 1,
                               generator=generator)[:, 0]
from the model's output logits (batch x classes; classification with cross-entropy),
and runs one extra backward of cross_entropy(logits, labels, reduction="sum") from the
logits to the blocks (torch.autograd.grad, graph retained; parameter .grad untouched),
whose per-sample output gradients become the rows (no batch scaling: the loss is a
sum). Activation rows are the same in both. Pass generator (a torch.Generator or an int
seed) to make the draws reproducible; the last draw is kept in .last_sampled_labels.

step(). Sends the model's gradient in the session's parameter order (per block
weight.grad.view(out, -1) row-major, then bias.grad; float32 gradients go as float32,
which is exact) and writes the natural gradient into each preconditioned parameter's
.grad: eta * n with n = (F + lambda I)^-1 g per block. eta = 1 without kl_budget; with
kl_budget c, the server's eta = sqrt(2c / g^T n), so that an optimizer step
p -= lr * grad with lr = 1 has predicted KL c. Returns a KFACStep (eta, predicted KL,
factor age, solver method and seconds, rows streamed). Steps of an iteration that did
not update the factors are taken with skip_decay, so factor_decay is the decay per
factor update (an exponential moving average over the batches used), as in K-FAC.
Everything goes over the one channel of `client`.

Several replicas. `client` may be a list of fisherd.Client, one per fisherd replica.
With one, nothing changes. With more, the blocks are spread over the replicas as one
fisherd.ShardedLayeredSession (.sharded; the assignment balances each block's
eigendecomposition cost, docs/design.md section 7): every block's rows go to its
replica, all replicas are streamed to and stepped in parallel, and the combined step
(eta, KL budget, predicted KL) is the one a single session of all blocks answers, so
.grad is the same. Data-parallel ranks attach with create_session=False as below, each
with the same list of replicas in the same order.

Data-parallel training. Several processes may feed one session, each its own shard's
rows under its own worker_id (rows are scaled by each process's own batch size, so the
session holds exactly what one process with all shards would hold). One of them creates
the session and takes the steps:

    kfac = KFACPreconditioner(model, client, "job-1", damping=1e-3,
                              worker_id=f"rank{rank}", create_session=(rank == 0),
                              take_steps=(rank == 0), barrier=torch.distributed.barrier)
    ...
    loss.backward()              # DistributedDataParallel averages the gradients
    kfac.step()                  # every rank streams its rows; barrier; rank 0 steps
    for p in kfac.parameters():  # rank 0's natural gradient to every rank
        torch.distributed.broadcast(p.grad, 0)
    optimizer.step()

create_session=False attaches to an existing session (waiting up to attach_timeout
seconds for it to appear) and checks that its blocks are this model's. With
take_steps=False, step() streams the rows, calls the barrier and returns None, leaving
.grad as it is. The barrier (any callable) runs on every rank between streaming and the
step, so that the step sees every shard's rows.

Timings. .timings holds seconds summed over iterations ("hooks": time inside the
forward and gradient hooks; "fisher_pass": the true Fisher's sampling and extra
backward; "rows": making rows from the kept tensors; "stream": streaming them;
"gradient": gathering the gradient; "step": the step RPC; "write": writing .grad) and
"iterations"; .last_timings the same for the last step() alone.
"""
import collections
import dataclasses
import functools
import math
import re
import time
import uuid

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fisherd.client import Block, StepResult
from fisherd.errors import FisherdError, invalid_argument
from fisherd.sharded import ShardedLayeredSession

__all__ = ["KFACPreconditioner", "KFACStep", "UnsupportedModuleError"]

_BLOCK_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_TIMING_KEYS = ("hooks", "fisher_pass", "rows", "stream", "gradient", "step", "write")
_GRAM_CHUNK = 8192  # rows per float64 product when compressing (bounds the float64 copy)
# compress_rows="auto": only factors whose Gram matrix is cheaper to form here than the
# rows are to stream and fold in on the server (measured on loopback, 65536 rows: width
# 128 compresses and streams in 84 ms against 141 ms streamed, 288 in 214 against 233
# ms, 576 in 772 against 518 ms), and only batches of at least 1 MiB of rows.
_AUTO_COMPRESS_MAX_WIDTH = 256
_AUTO_COMPRESS_MIN_VALUES = 1 << 18


class UnsupportedModuleError(TypeError):
    """A module with trainable parameters that fisherd.torch cannot precondition.
    .module_name is its path in model.named_modules(), .module its instance."""

    def __init__(self, module_name, module, reason):
        self.module_name = module_name
        self.module = module
        super().__init__(
            f"module {module_name or '<root>'!r} ({type(module).__name__}) has trainable "
            f"parameters but {reason}. fisherd.torch preconditions nn.Linear and nn.Conv2d "
            "(groups=1) only; pass unsupported=\"optimizer\" to leave this module's plain "
            "gradients to the optimizer, name the modules to precondition in layers=[...], "
            "or freeze its parameters")


@dataclasses.dataclass(frozen=True)
class KFACStep:
    """What one KFACPreconditioner.step() did."""
    eta: float                 # the scale of the natural gradient written into .grad
    predicted_kl: float        # 1/2 eta^2 n^T F n (undamped F), the server's figure
    natural_norm_sq: float     # g^T n
    factor_age_steps: int      # age of the oldest factor decomposition used (section 7)
    solver_method: str         # "layered" (per-block summaries in result.solver.blocks)
    solver_seconds: float      # the server's factorization and solve time
    rows_streamed: int         # activation + output-gradient rows sent this iteration
    factors_updated: bool      # this iteration sent rows (else the step skipped decay)
    result: StepResult         # the full answer (natural_gradient, update, solver)


class _Record:
    """One call of a block's module: its input and, once backward ran, the gradient of
    its output, with the factor that turns it into per-sample output gradients."""
    __slots__ = ("input", "grad", "scale")

    def __init__(self, inputs):
        self.input = inputs
        self.grad = None
        self.scale = 1.0


class _Layer:
    """A Linear or Conv2d module and its Kronecker block."""

    def __init__(self, name, module):
        self.name = name
        self.module = module
        self.conv = isinstance(module, nn.Conv2d)
        weight = module.weight
        self.out_features = weight.shape[0]
        self.in_features = weight[0].numel()
        self.bias = module.bias is not None
        self.parameters = [weight] + ([module.bias] if self.bias else [])
        self.records = []
        self.handles = []

    @property
    def block(self):
        return Block(self.name, "kronecker", in_features=self.in_features,
                     out_features=self.out_features, bias=self.bias)

    @property
    def parameter_count(self):
        return self.out_features * (self.in_features + int(self.bias))

    # Rows, as docs/design.md section 7 says a worker sends them.
    def _patch_rows(self, x):
        """(batch * T, in_channels * kh * kw) rows of input patches, and T: bitwise
        F.unfold(x, kernel_size, dilation, padding, stride).transpose(1, 2) as rows, but
        formed as one strided view of the padded channels-last input and copied once
        (measured 0.45 s against 0.7-0.9 s for unfold and its transposed copy, for
        128 x 64 x 32 x 32 and a 3x3 kernel)."""
        m = self.module
        if x.dim() == 3:  # an unbatched (C, H, W) input
            x = x.unsqueeze(0)
        # What Conv2d itself pads by (left, right, top, bottom), padding="same" included.
        pad = getattr(m, "_reversed_padding_repeated_twice", None)
        if pad is None:
            pad = (m.padding[1], m.padding[1], m.padding[0], m.padding[0])
        if any(pad):
            mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
            x = F.pad(x, tuple(pad), mode=mode)
        x = x.permute(0, 2, 3, 1).contiguous()  # (batch, Hp, Wp, C)
        batch, height, width, channels = x.shape
        (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
        rows_out = (height - dh * (kh - 1) - 1) // sh + 1
        cols_out = (width - dw * (kw - 1) - 1) // sw + 1
        sb, sy, sx, sc = x.stride()
        view = x.as_strided((batch, rows_out, cols_out, channels, kh, kw),
                            (sb, sh * sy, sw * sx, sc, dh * sy, dw * sx), x.storage_offset())
        return view.reshape(-1, self.in_features), rows_out * cols_out

    def activation_rows(self, x):
        """(rows, in_features) and T, the positions per sample."""
        if self.conv:
            return self._patch_rows(x)
        rows = x.reshape(-1, self.in_features)
        batch = x.shape[0] if x.dim() > 1 else 1
        return rows, rows.shape[0] // batch

    def gradient_rows(self, grad):
        if self.conv:
            if grad.dim() == 3:
                grad = grad.unsqueeze(0)
            return grad.permute(0, 2, 3, 1).reshape(-1, self.out_features)
        return grad.reshape(-1, self.out_features)

    def gradient(self):
        """This block's slice of g: weight.grad.view(out, -1) row-major, then bias.grad."""
        parts = []
        for p in self.parameters:
            parts.append(torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
                         if p.grad is None else p.grad.reshape(-1))
        return torch.cat(parts) if len(parts) > 1 else parts[0]


def _is_number(value):
    try:
        return math.isfinite(float(value)) and not isinstance(value, (bool, str))
    except (TypeError, ValueError):
        return False


def _supported(module):
    """None if module can be a Kronecker block, else the reason it cannot."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            reason = f"groups={module.groups} (only groups=1 convolutions are supported)"
            return reason
    elif not isinstance(module, nn.Linear):
        return "its type has no Kronecker block"
    if isinstance(module.weight, nn.parameter.UninitializedParameter):
        return "its weight is not initialized yet (run one forward pass first)"
    if not module.weight.requires_grad:
        return "its weight is frozen while its bias trains"
    return None


def _compress(rows, bias):
    """Rows R (N x d) of one factor from one batch -> (rows R', weights w') with the same
    contribution to the factor's sums: sum w' = N, sum w' r' r'^T = R^T R and, when the
    server appends a 1 to every row (bias), sum w' r' = sum r (so the appended column's
    sums are kept too). Exact in exact arithmetic; see the module docstring for the
    rounding. With the batch's Gram matrix C = R^T R (float64, products of float32 values
    are exact in float64) and, for bias, its mean m = sum r / N and S = C - N m m^T =
    V diag(e) V^T (e > 0 kept, k of them), w = the largest power of two <= N / (2k):
      bias:     rows m +- sqrt(e_j / 2w) v_j, weight w each, plus the row m with weight
                N - 2kw (so sum w' = N exactly, every weight exact in float32);
      no bias:  rows sqrt(e_j / w) v_j (C's own eigenpairs), weight w, plus a zero row of
                weight N - kw.
    2k + 1 or k + 1 rows instead of N."""
    count, width = rows.shape
    if rows.device.type == "cpu":
        # NumPy turns chunk.T @ chunk into dsyrk (half the products of torch's addmm,
        # measured 0.63 s against 1.10 s for 65536 x 576).
        values = rows.numpy()
        total = np.zeros((width, width))
        for start in range(0, count, _GRAM_CHUNK):
            chunk = values[start:start + _GRAM_CHUNK].astype(np.float64)
            total += chunk.T @ chunk
        gram = torch.from_numpy(total)
    else:
        gram = torch.zeros(width, width, dtype=torch.float64, device=rows.device)
        for start in range(0, count, _GRAM_CHUNK):
            chunk = rows[start:start + _GRAM_CHUNK].to(torch.float64)
            gram.addmm_(chunk.t(), chunk)
    if bias:
        mean = rows.sum(dim=0, dtype=torch.float64) / count
        gram -= count * torch.outer(mean, mean)
    values, vectors = torch.linalg.eigh(gram)
    keep = values > 0
    values, vectors = values[keep], vectors[:, keep]
    pairs = values.shape[0] * (2 if bias else 1)
    if pairs == 0:  # all rows equal (bias) or zero: one row carries everything
        out = (mean if bias else torch.zeros(width, dtype=torch.float64)).reshape(1, -1)
        return out.to(torch.float32), torch.tensor([float(count)])
    weight = 2.0 ** math.floor(math.log2(count / pairs))
    if bias:
        step = (vectors * torch.sqrt(values / (2 * weight))).t()
        out = [mean + step, mean - step]
        extra = mean
    else:
        out = [(vectors * torch.sqrt(values / weight)).t()]
        extra = torch.zeros(width, dtype=torch.float64, device=rows.device)
    weights = [torch.full((pairs,), weight, dtype=torch.float64)]
    remainder = count - pairs * weight
    if remainder > 0:
        out.append(extra.reshape(1, -1))
        weights.append(torch.tensor([remainder], dtype=torch.float64))
    return torch.cat(out).to(torch.float32), torch.cat(weights).to(torch.float32)


class KFACPreconditioner:
    """K-FAC natural gradient for a PyTorch model through a fisherd layered session.

    model: the nn.Module to train. client: a fisherd.Client (its one channel carries all
    rows and steps), or a list of them, one per fisherd replica: with more than one the
    blocks are spread over the replicas (.sharded, a fisherd.ShardedLayeredSession whose
    shards are "{session_id}.{k}-of-{n}"; .client is then None), with one it is as a
    single client. session_id: the session to create (or attach to, see
    create_session). damping: lambda >= 0, the session's default (exact damping per
    Kronecker block). kl_budget: None (eta = 1) or c > 0 (eta = sqrt(2c / g^T n)).
    eta_cap: None or a number > 0 that eta never exceeds: with kl_budget, the budget then
    only clips large steps (eta = min(eta_cap, sqrt(2c / g^T n)), kfac-pytorch's
    "kl_clip" with eta_cap = 1), so steps shrink with the gradient near a minimum instead
    of keeping the budget's size; without kl_budget, eta = eta_cap.
    fisher: "empirical" (the training backward's output gradients) or "true" (labels drawn
    from the model's softmax, one extra backward). factor_decay: the session's decay, per
    factor update. update_factors_every: rows are kept and streamed on every this-many-th
    call of step() (the first included); the server re-decomposes a factor only after new
    rows. layers: module paths to precondition (Linear or Conv2d), None for all of them.

    unsupported: "error" (default; any other module with trainable parameters raises
    UnsupportedModuleError naming it) or "optimizer" (their plain gradients are left to
    the optimizer; see the module docstring for why they get no blocks).
    loss_reduction: "mean" (default: output-gradient rows are multiplied by the batch
    size), "sum", or a number to multiply them by. conv_scaling: "kfc" (default) or
    "average" (see the module docstring). generator: a torch.Generator or an int seed
    for fisher="true"'s draws (None: torch's global generator).
    worker_id: this process's worker id for the rows (default: unique per instance).
    create_session: True to create the session, False to attach to one another process
    creates (waiting up to attach_timeout seconds). take_steps: False for a data-parallel
    rank that only streams rows. barrier: a callable run between streaming and the step.
    kronecker_damping ("exact" or "factored"), factor_refresh_period and float32_products
    are passed to the session (docs/design.md section 7); float32_products=True takes the
    steps' eigenbasis products in float32, about half the server's step time on large
    layers, with n rounded to ~1e-7 relative times the spread of the damped eigenvalues.
    compress_rows: "auto" (default), True or False (see "Compressed rows" in the module
    docstring). answer: "auto" (default) asks the server for the update alone, in the
    parameters' precision (float32 parameters: "update_f32", a quarter of the float64
    answer's bytes, the same rounding .grad applies), so summary.result.natural_gradient
    is None; "full" also brings n back in float64. A sharded session always answers in
    full (its eta is computed from every shard's n).
    """

    def __init__(self, model, client, session_id, *, damping, kl_budget=None, eta_cap=None,
                 fisher="empirical", factor_decay=0.95, update_factors_every=1, layers=None,
                 unsupported="error", loss_reduction="mean", conv_scaling="kfc",
                 generator=None, worker_id=None, create_session=True, take_steps=True,
                 barrier=None, attach_timeout=30.0, kronecker_damping=None,
                 factor_refresh_period=0, float32_products=False, compress_rows="auto",
                 answer="auto"):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if fisher not in ("empirical", "true"):
            raise invalid_argument(f"fisher must be \"empirical\" or \"true\", got {fisher!r}")
        if unsupported not in ("error", "optimizer"):
            raise invalid_argument("unsupported must be \"error\" or \"optimizer\", got "
                                   f"{unsupported!r}")
        if conv_scaling not in ("kfc", "average"):
            raise invalid_argument(f"conv_scaling must be \"kfc\" or \"average\", got "
                                   f"{conv_scaling!r}")
        if isinstance(loss_reduction, str):
            if loss_reduction not in ("mean", "sum"):
                raise invalid_argument("loss_reduction must be \"mean\", \"sum\" or a number, "
                                       f"got {loss_reduction!r}")
        elif not (isinstance(loss_reduction, (int, float)) and loss_reduction > 0):
            raise invalid_argument(f"loss_reduction must be \"mean\", \"sum\" or a number > 0, "
                                   f"got {loss_reduction!r}")
        if compress_rows not in ("auto", True, False):
            raise invalid_argument(f"compress_rows must be \"auto\", True or False, got "
                                   f"{compress_rows!r}")
        if not (_is_number(damping) and damping >= 0):
            raise invalid_argument(f"damping must be a finite number >= 0, got {damping!r}")
        if kl_budget is not None and not (_is_number(kl_budget) and kl_budget > 0):
            raise invalid_argument(f"kl_budget must be None or a number > 0, got {kl_budget!r}")
        if eta_cap is not None and not (_is_number(eta_cap) and eta_cap > 0):
            raise invalid_argument(f"eta_cap must be None or a number > 0, got {eta_cap!r}")
        if not (0 < factor_decay <= 1):
            raise invalid_argument(f"factor_decay must be in (0, 1], got {factor_decay!r}")
        if int(update_factors_every) != update_factors_every or update_factors_every < 1:
            raise invalid_argument("update_factors_every must be an integer >= 1, got "
                                   f"{update_factors_every!r}")
        clients = list(client) if isinstance(client, (list, tuple)) else [client]
        if not clients:
            raise invalid_argument("client must be a fisherd.Client or a non-empty list of them")
        self.model = model
        self.clients = tuple(clients)
        # One replica: today's single session. Several: one sharded session (set by
        # _open_session), and no single client that holds it.
        self.client = clients[0] if len(clients) == 1 else None
        self.sharded = None
        self.damping = float(damping)
        self.kl_budget = None if kl_budget is None else float(kl_budget)
        self.eta_cap = None if eta_cap is None else float(eta_cap)
        self.fisher = fisher
        self.factor_decay = float(factor_decay)
        self.update_factors_every = int(update_factors_every)
        self.loss_reduction = loss_reduction
        self.conv_scaling = conv_scaling
        self.compress_rows = compress_rows
        if answer not in ("auto", "full"):
            raise invalid_argument(f"answer must be \"auto\" or \"full\", got {answer!r}")
        self.answer = answer
        if isinstance(generator, int):
            generator = torch.Generator().manual_seed(generator)
        self.generator = generator
        self.worker_id = worker_id or f"kfac-{uuid.uuid4().hex[:12]}"
        self.take_steps = bool(take_steps)
        self.barrier = barrier
        self.last_sampled_labels = None
        self.iteration = 0          # calls of step() so far
        self.timings = collections.defaultdict(float)
        self.last_timings = {}
        self._pass = "training"     # or "sampled" during fisher="true"'s extra backward
        self._pending = []          # records of the forward under way (fisher="true")
        self._iteration_timings = collections.defaultdict(float)

        self.layers, self.other_parameters = self._select(layers, unsupported)
        if not self.layers:
            raise invalid_argument("the model has no trainable nn.Linear or nn.Conv2d module "
                                   "to precondition")
        self.blocks = [layer.block for layer in self.layers]
        self.session = self._open_session(session_id, create_session, attach_timeout,
                                          kronecker_damping, factor_refresh_period,
                                          float32_products)
        for layer in self.layers:
            layer.handles.append(layer.module.register_forward_hook(
                functools.partial(self._forward_hook, layer)))
        self._root_handle = None
        if fisher == "true":
            self._root_handle = model.register_forward_hook(self._model_hook)

    # --- setup ---------------------------------------------------------------------------
    def _select(self, layers, unsupported):
        named = dict(self.model.named_modules())
        wanted = None
        if layers is not None:
            wanted = list(layers)
            for name in wanted:
                if name not in named:
                    raise invalid_argument(f"layers: the model has no module {name!r}")
        selected, others, owners = [], [], {}
        for name, module in named.items():
            trainable = [p for p in module.parameters(recurse=False) if p.requires_grad]
            for p in module.parameters(recurse=False):
                owners.setdefault(id(p), []).append(name)
            if wanted is not None and name not in wanted:
                others.extend(trainable)
                continue
            if not trainable:
                if wanted is None:
                    continue
                raise invalid_argument(f"layers: module {name!r} has no trainable parameters")
            reason = _supported(module)
            if reason is not None:
                if wanted is not None or unsupported == "error":
                    raise UnsupportedModuleError(name, module, reason)
                others.extend(trainable)
                continue
            block_name = name or "root"
            if not _BLOCK_NAME.match(block_name):
                raise invalid_argument(
                    f"module {name!r}: its path is not a valid block name (1-128 characters "
                    "of [a-zA-Z0-9_.-]); rename it or leave it out with layers=[...]")
            selected.append(_Layer(block_name, module))
        for layer in selected:
            for p in layer.parameters:
                if len(owners[id(p)]) > 1:
                    raise invalid_argument(
                        f"module {layer.name!r}: its parameter is shared with module(s) "
                        f"{[n for n in owners[id(p)] if n != layer.name]}; tied weights cannot "
                        "be one Kronecker block (leave the module out with layers=[...])")
        return selected, others

    def _open_session(self, session_id, create, attach_timeout, kronecker_damping,
                      factor_refresh_period, float32_products):
        bare = session_id[len("sessions/"):] if session_id.startswith("sessions/") else session_id
        if len(self.clients) > 1:
            # The sharded session checks an attached layout shard by shard itself.
            self.sharded = ShardedLayeredSession(
                list(self.clients), bare, self.blocks, create=create, decay=self.factor_decay,
                damping=self.damping, kronecker_damping=kronecker_damping,
                factor_refresh_period=factor_refresh_period, float32_products=float32_products,
                attach_timeout=attach_timeout)
            return self.sharded.name
        if create:
            return self.client.create_session(
                bare, blocks=self.blocks, decay=self.factor_decay, damping=self.damping,
                kronecker_damping=kronecker_damping,
                factor_refresh_period=factor_refresh_period, float32_products=float32_products)
        name = f"sessions/{bare}"
        deadline = time.monotonic() + attach_timeout
        while True:
            try:
                info = self.client.get_session(name)
                break
            except FisherdError as error:
                if error.code.name != "NOT_FOUND" or time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
        if tuple(info.blocks) != tuple(self.blocks):
            def shapes(blocks):
                return [(b.name, b.in_features, b.out_features, b.bias) for b in blocks]
            raise invalid_argument(f"{name} has blocks {shapes(info.blocks)} that do not match "
                                   f"this model's {shapes(self.blocks)}")
        return name

    def parameters(self):
        """The preconditioned parameters, in the session's order."""
        return [p for layer in self.layers for p in layer.parameters]

    def remove(self):
        """Removes the hooks (the session stays; client.delete_session(.session), or
        .sharded.delete() over several replicas, ends it)."""
        for layer in self.layers:
            for handle in layer.handles:
                handle.remove()
            layer.handles.clear()
            layer.records.clear()
        if self._root_handle is not None:
            self._root_handle.remove()
            self._root_handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False

    # --- hooks ---------------------------------------------------------------------------
    @property
    def capturing(self):
        """Whether the current iteration's batches update the factors."""
        return self.iteration % self.update_factors_every == 0

    def _forward_hook(self, layer, module, inputs, output):
        if not (self.capturing and torch.is_grad_enabled() and isinstance(output, torch.Tensor)
                and output.requires_grad and inputs and isinstance(inputs[0], torch.Tensor)):
            return
        start = time.perf_counter()
        x = inputs[0]
        record = _Record(x.detach())
        layer.records.append(record)
        output.register_hook(functools.partial(self._output_hook, record))
        if self.fisher == "true":
            # What the extra backward must reach: this module's backward node runs when
            # the gradient of its input, or else of its weight, is asked for.
            self._pending.append((record, x if x.requires_grad else module.weight))
        self._iteration_timings["hooks"] += time.perf_counter() - start

    def _output_hook(self, record, grad):
        wanted = "sampled" if self.fisher == "true" else "training"
        if self._pass == wanted:
            start = time.perf_counter()
            record.grad = grad.detach()
            if wanted == "sampled":
                record.scale = 1.0  # the extra backward's loss is a sum over samples
            elif self.loss_reduction == "mean":
                x = record.input
                record.scale = float(x.shape[0] if x.dim() > 1 else 1)
            elif self.loss_reduction == "sum":
                record.scale = 1.0
            else:
                record.scale = float(self.loss_reduction)
            self._iteration_timings["hooks"] += time.perf_counter() - start

    def _model_hook(self, module, inputs, output):
        pending, self._pending = self._pending, []
        if not pending:
            return
        start = time.perf_counter()
        if not (isinstance(output, torch.Tensor) and output.dim() == 2):
            raise invalid_argument(
                "fisher=\"true\" needs the model to return logits of shape (batch, classes); "
                f"got {type(output).__name__} {getattr(output, 'shape', '')}")
        logits = output.detach()
        labels = torch.multinomial(torch.softmax(logits, dim=1), 1,
                                   generator=self.generator)[:, 0]
        self.last_sampled_labels = labels
        with torch.enable_grad():
            leaf = logits.requires_grad_()
            seed, = torch.autograd.grad(F.cross_entropy(leaf, labels, reduction="sum"), leaf)
        self._pass = "sampled"
        try:
            torch.autograd.grad(output, [target for _, target in pending], grad_outputs=seed,
                                retain_graph=True, allow_unused=True)
        finally:
            self._pass = "training"
        self._iteration_timings["fisher_pass"] += time.perf_counter() - start

    # --- rows and steps ------------------------------------------------------------------
    def _rows(self):
        """[(block, factor, float32 rows)] from the records kept since the last call."""
        parts = []
        for layer in self.layers:
            records = [r for r in layer.records if r.grad is not None]
            layer.records = []
            if not records:
                continue
            acts, grads = [], []
            for record in records:
                a, positions = layer.activation_rows(record.input)
                g = layer.gradient_rows(record.grad)
                if g.shape[0] != a.shape[0]:
                    raise RuntimeError(f"block {layer.name}: {a.shape[0]} activation rows but "
                                       f"{g.shape[0]} output-gradient rows")
                scale = record.scale
                if self.conv_scaling == "kfc" and positions > 1:
                    scale *= math.sqrt(positions)
                acts.append(a)
                grads.append(g * scale if scale != 1.0 else g)
            for factor, rows in (("activations", acts), ("output_gradients", grads)):
                rows = rows[0] if len(rows) == 1 else torch.cat(rows)
                rows = rows.detach().to(torch.float32)
                bias = layer.bias and factor == "activations"
                if self._should_compress(rows.shape, bias):
                    rows, weights = _compress(rows, bias)
                    parts.append((layer.name, factor, rows.cpu().contiguous().numpy(),
                                  weights.numpy()))
                else:
                    parts.append((layer.name, factor, rows.cpu().contiguous().numpy()))
        self._pending = []
        return parts

    def _should_compress(self, shape, bias):
        """Whether a factor's rows of one iteration go compressed (see _compress)."""
        count, width = shape
        most = (2 * width + 1) if bias else (width + 1)  # rows after compression, at most
        if self.compress_rows == "auto":
            return (count >= 4 * most and width <= _AUTO_COMPRESS_MAX_WIDTH
                    and count * width >= _AUTO_COMPRESS_MIN_VALUES)
        return bool(self.compress_rows) and count > most

    def stream_factors(self):
        """Streams the rows kept since the last call (all blocks, one stream) under this
        instance's worker_id; returns the number of rows sent. step() calls it."""
        start = time.perf_counter()
        parts = self._rows()
        middle = time.perf_counter()
        self._iteration_timings["rows"] += middle - start
        if not parts:
            return 0
        if self.sharded is not None:
            result = self.sharded.stream_blocks(parts, worker_id=self.worker_id)
        else:
            result = self.client.stream_blocks(self.session, parts, worker_id=self.worker_id)
        self._iteration_timings["stream"] += time.perf_counter() - middle
        return result.rows

    def gradient(self):
        """The model's gradient in the session's parameter order (a torch vector)."""
        return torch.cat([layer.gradient() for layer in self.layers])

    def step(self):
        """After loss.backward(): streams this iteration's rows, takes the step and writes
        eta * n into .grad of every preconditioned parameter; returns a KFACStep (None
        when take_steps is False)."""
        updated = self.capturing
        try:
            rows = self.stream_factors()
            if self.barrier is not None:
                self.barrier()
            if not self.take_steps:
                return None
            start = time.perf_counter()
            g = self.gradient().detach().cpu()
            dtype = "float32" if g.dtype == torch.float32 else "float64"
            g = g.to(torch.float32 if dtype == "float32" else torch.float64).numpy()
            middle = time.perf_counter()
            if self.sharded is not None:
                result = self.sharded.step(g, kl_budget=self.kl_budget or 0.0,
                                           learning_rate=self.eta_cap or 0.0,
                                           skip_decay=not updated, gradient_dtype=dtype)
            else:
                answer = ("full" if self.answer == "full" else
                          "update_f32" if dtype == "float32" else "update")
                result = self.client.step(self.session, g, kl_budget=self.kl_budget or 0.0,
                                          learning_rate=self.eta_cap or 0.0,
                                          skip_decay=not updated, gradient_dtype=dtype,
                                          answer=answer)
            after = time.perf_counter()
            # update = -eta n, computed by the server in float64 (and rounded to float32
            # there for float32 parameters, as copying it into .grad would): .grad = eta n.
            update = result.update
            offset = 0
            with torch.no_grad():
                for layer in self.layers:
                    for p in layer.parameters:
                        value = torch.from_numpy(update[offset:offset + p.numel()]).view_as(p)
                        if p.grad is None:
                            p.grad = torch.empty_like(p)
                        p.grad.copy_(value).neg_()  # sign flips are exact
                        offset += p.numel()
            done = time.perf_counter()
            self._iteration_timings["gradient"] += middle - start
            self._iteration_timings["step"] += after - middle
            self._iteration_timings["write"] += done - after
            solver = result.solver
            return KFACStep(eta=result.eta, predicted_kl=result.predicted_kl,
                            natural_norm_sq=result.natural_norm_sq,
                            factor_age_steps=solver.factor_age_steps,
                            solver_method=solver.method, solver_seconds=solver.seconds,
                            rows_streamed=rows, factors_updated=updated, result=result)
        finally:
            self.iteration += 1
            self.last_timings = {k: self._iteration_timings.get(k, 0.0) for k in _TIMING_KEYS}
            for key, value in self.last_timings.items():
                self.timings[key] += value
            self.timings["iterations"] += 1
            self._iteration_timings = collections.defaultdict(float)

    def reset_timings(self):
        self.timings = collections.defaultdict(float)
