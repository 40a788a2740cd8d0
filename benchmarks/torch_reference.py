"""PyTorch reference train steps for the peer comparison (`benchmarks.run`, section peers), CPU torch==2.13.0.

Each builder returns a zero-argument `step()` that trains one step on a fixed batch and returns
only when the work is done, so that `benchmarks.median_seconds(step, ...)` times it:

- `saelens_step`: SAELens' own training step, as `SAETrainer._train_step` runs it: the SAE's
  `training_forward_pass` (MSE + L1 for relu, MSE + AuxK for topk), the dead-latent bookkeeping, the
  backward, gradient-norm clipping at 1, Adam, zero_grad.
- `sparsify_step`: EleutherAI sparsify's `SparseCoder` (its fused top-k encoder with the sparse
  backward, its embedding-bag decoder on CPU) with the update sequence of its `Trainer`: unit-norm
  decoder rows, FVU + AuxK over the latents dead for 10M tokens, the decoder-parallel gradient
  removed, Adam.
- `plain_step`: a minimal module doing what saejax's step does (ReLU + L1 or TopK, MSE, Adam,
  decoder rows renormalised), eager or under `torch.compile`.

Nothing here is imported by saejax; torch and sae-lens come with the `test` extra.
"""

import torch


def _threads() -> None:
    import os  # noqa: PLC0415

    torch.set_num_threads(os.cpu_count() or 1)


def saelens_step(arch: str, d_in: int, d_sae: int, x: torch.Tensor, *, k: int = 32, l1: float = 5.0, lr: float = 1e-4):
    """SAELens' training step for `arch` ("relu": StandardTrainingSAE, "topk": TopKTrainingSAE)."""
    from sae_lens.saes.sae import TrainStepInput  # noqa: PLC0415
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig  # noqa: PLC0415
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig  # noqa: PLC0415

    _threads()
    torch.manual_seed(0)
    if arch == "relu":
        sae, coefficients = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=l1)), {"l1": l1}
    elif arch == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, rescale_acts_by_decoder_norm=False))
        coefficients = {}
    else:
        raise ValueError(f"no SAELens reference for {arch!r}")
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    steps_since_fired = torch.zeros(d_sae)
    dead_after = 1000

    def step():
        sae.train()
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients=coefficients,
                                                       dead_neuron_mask=steps_since_fired > dead_after,
                                                       n_training_steps=0, is_logging_step=False))
        with torch.no_grad():
            fired = out.feature_acts.bool().float().sum(-2).bool()
            steps_since_fired.add_(1)
            steps_since_fired[fired] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        return float(out.loss.detach())

    return step


def sparsify_step(d_in: int, d_sae: int, x: torch.Tensor, *, k: int = 32, lr: float = 1e-4):
    """One step of sparsify's Trainer on its `SparseCoder` (TopK), as its training loop runs it."""
    from sparsify import SparseCoder, SparseCoderConfig  # noqa: PLC0415

    _threads()
    torch.manual_seed(0)
    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=k), "cpu", torch.float32)
    sae.b_dec.data = x.mean(0)
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    tokens_since_fired = torch.zeros(d_sae, dtype=torch.long)
    dead_after = 10_000_000
    total_variance = (x - x.mean(0)).pow(2).sum()

    def step():
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x, dead_mask=tokens_since_fired > dead_after, total_variance=total_variance)
        loss = out.fvu + out.auxk_loss / 32 + out.multi_topk_fvu / 8
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            fired = torch.zeros(d_sae, dtype=torch.bool)
            fired[out.latent_indices.flatten()] = True
            tokens_since_fired.add_(x.shape[0])
            tokens_since_fired[fired] = 0
        return float(loss.detach())

    return step


class PlainSAE(torch.nn.Module):
    """W_enc [d, F], b_enc [F], W_dec [F, d] (unit rows), b_dec [d]; ReLU + L1 or TopK; MSE."""

    def __init__(self, arch: str, d_in: int, d_sae: int, k: int, l1: float):
        super().__init__()
        directions = torch.nn.functional.normalize(torch.randn(d_sae, d_in), dim=-1)
        self.W_dec = torch.nn.Parameter(directions.clone())
        self.W_enc = torch.nn.Parameter(0.1 * directions.T.clone())
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))
        self.arch, self.k, self.l1 = arch, k, l1

    def forward(self, x):
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        if self.arch == "relu":
            z = torch.relu(pre)
            penalty = self.l1 * z.sum(-1).mean()
        else:
            values, indices = pre.topk(self.k, dim=-1)
            z = torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
            penalty = 0.0
        x_hat = z @ self.W_dec + self.b_dec
        return (x - x_hat).square().sum(-1).mean() + penalty


def plain_step(arch: str, d_in: int, d_sae: int, x: torch.Tensor, *, k: int = 32, l1: float = 5.0,
               lr: float = 1e-4, compile: bool = False):
    """A minimal PyTorch step (see module docstring); `compile` wraps the module in torch.compile."""
    _threads()
    torch.manual_seed(0)
    model = PlainSAE(arch, d_in, d_sae, k, l1)
    forward = torch.compile(model) if compile else model
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def step():
        loss = forward(x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.W_dec.div_(model.W_dec.norm(dim=-1, keepdim=True))
        return float(loss)

    return step
