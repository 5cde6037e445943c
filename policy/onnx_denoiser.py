"""The denoiser exported to ONNX and run by ONNX Runtime: the "onnx" inference backend.

Why. On a CPU, one evaluation of the eager network is ~160 PyTorch operators, each paying
Python and dispatcher overhead of a few microseconds before any arithmetic; for the 5.4 M UNet
at batch 1 that overhead is most of the time. ONNX Runtime runs the same graph from C++ in one
call per evaluation, after fusing and pre-packing it once for this CPU. Only the network
evaluation moves: the sampling loop (policy/samplers.py) stays in torch around it, so every
sampler (DDPM, DDIM, consistency, the one-shot "mse" call) works unchanged. It pays off for
small networks at small batches (the 5.4 M UNet at batch 1: about half the plain network's
time, where the eager fast layers save a quarter) and for the transformer (about half at batch
1, 0.7 at batch 50); the 65.8 M UNet at batch 1 is faster eager (packed oneDNN weights), and at
batch 50 ONNX Runtime runs both UNets slower than plain PyTorch (docs/benchmarks.md), which is
why this is an opt-in backend and not the default.

What. ``OnnxDenoiser(net, horizon, action_dim, cond_dim)`` traces ``net(sample (B, T, Da),
timestep (B,), global_cond (B, Dc)) -> (B, T, Da)`` once with torch.onnx.export (batch size
left free, convolutions as 2D ones: fast_layers.convs_as_2d), opens an ONNX Runtime CPU session
on the bytes, and is then called like the net. Its outputs equal the eager net's to float
rounding (tests/test_onnx_denoiser.py states the tolerance). The session owns a copy of the
weights as they were at export; the denoiser keeps the exported tensors only to recognise them.

Stale weights. That copy must never answer for other weights. ``matches(net)`` says whether the
net's parameters and buffers are still the tensors, at the addresses and at the versions, that
were exported: PyTorch counts every in-place write to a tensor in ``tensor._version``, so an
optimizer step, load_state_dict, EMA.update, ``p.mul_(2)`` under no_grad, ``.to()`` or a new
Parameter all make it False, and DiffusionPolicy then exports again before its next call. The
one write no counter sees is one through ``.data`` (``p.data.copy_(w)``): after it, call
DiffusionPolicy.refresh_backend() (or ``policy.eval()``), the same rule as the fast layers'
caches (policy/fast_layers.py).

Why the TorchScript exporter (``dynamo=False``): the torch.export-based one needs onnxscript
and took ~7x longer to export a small UNet here (10.6 s against 1.5 s), and its graph of the
5.4 M UNet ran 1.35x slower at batch 1; an export happens on every weight change. PyTorch
still ships it in the versions pyproject.toml allows (< 2.14), with a deprecation warning
that is silenced below.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from dplite.policy.fast_layers import convs_as_2d, fast_paths_disabled
from dplite.policy.unet1d import batch_timesteps

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install -e ".[onnx]"  (or EXTRAS=test,onnx bash scripts/install.sh)'
OPSET = 17  # the newest the TorchScript exporter writes for every torch the project allows


def import_onnxruntime():
    """onnxruntime, or a ValueError naming the extra that installs it (a user's choice of
    backend is the input at fault, so the commands report it as one). The onnx package is
    checked too: torch's exporter imports it to finish the model."""
    try:
        import onnx  # noqa: F401 -- needed by torch.onnx.export, checked before it runs
        import onnxruntime
    except ImportError as e:
        raise ValueError(
            f"the onnx backend needs onnxruntime and onnx, which are not installed ({e}); "
            f"install the 'onnx' extra: {INSTALL_HINT}"
        ) from None
    return onnxruntime


class _Call(nn.Module):
    """net(sample, timestep, global_cond) as a module with exactly these three inputs."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, global_cond: torch.Tensor
    ) -> torch.Tensor:
        return self.net(sample, timestep, global_cond)  # (B, T, Da)


def _weights(net: nn.Module) -> list[torch.Tensor]:
    return [*net.parameters(), *net.buffers()]


def _fingerprint(tensors: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, int, int]]:
    # the tensors themselves, not their ids: a freed tensor's id can be reused by a new one
    return [(t, t.data_ptr(), t._version) for t in tensors]


def export_onnx(net: nn.Module, horizon: int, action_dim: int, cond_dim: int) -> bytes:
    """net in eval mode as ONNX bytes with inputs sample (B, T, Da) float32, timestep (B,)
    int64 and cond (B, Dc) float32 and output eps (B, T, Da); B is free. The net is traced as
    its plain nn layers (fast_paths_disabled: the fast layers' oneDNN ops have no ONNX form),
    its convolutions as 2D ones (convs_as_2d: ONNX Runtime's fast CPU convolutions are 2D);
    its mode is left as it was."""
    gen = torch.Generator().manual_seed(0)
    B = 2  # not 1: a batch of 1 can be traced as a constant by a broadcast
    args = (
        torch.randn(B, horizon, action_dim, generator=gen),  # (B, T, Da)
        torch.tensor([7, 3]),  # (B,)
        torch.randn(B, cond_dim, generator=gen),  # (B, Dc)
    )
    buf = io.BytesIO()
    was_training = net.training
    # predict_action runs in inference mode, whose tensors cannot be traced
    with (
        torch.inference_mode(False),
        torch.no_grad(),
        fast_paths_disabled(),
        convs_as_2d(),
        warnings.catch_warnings(),
    ):
        # the exporter's deprecation notice and its tracer's notes on the input checks
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                _Call(net).eval(),  # the inference network (the transformer's dropout off)
                args,
                buf,
                dynamo=False,
                input_names=["sample", "timestep", "cond"],
                output_names=["eps"],
                dynamic_axes={name: {0: "B"} for name in ("sample", "timestep", "cond", "eps")},
                opset_version=OPSET,
            )
        finally:
            net.train(was_training)
    return buf.getvalue()


class OnnxDenoiser:
    """A denoiser's export, called like it: (sample (B, T, Da), timestep int | () | (1,) |
    (B,), global_cond (B, Dc)) -> (B, T, Da) float32 CPU tensor.

    The session runs on torch.get_num_threads() threads (read at each call: a change opens a new
    session on the same bytes), so that backends compare at one thread count.
    """

    def __init__(self, net: nn.Module, horizon: int, action_dim: int, cond_dim: int) -> None:
        self.ort = import_onnxruntime()
        if cond_dim < 1:
            raise ValueError(f"OnnxDenoiser: cond_dim={cond_dim}, expected a conditioned net")
        if any(t.device.type != "cpu" for t in _weights(net)):
            raise ValueError(
                "OnnxDenoiser: the net must be on the CPU (ONNX Runtime's CPU provider)"
            )
        self.sample_shape = (horizon, action_dim)
        self.cond_dim = cond_dim
        self._exported = _fingerprint(_weights(net))
        self.model = export_onnx(net, horizon, action_dim, cond_dim)
        self.threads = 0
        self.session = None
        logger.info("exported the denoiser to ONNX (%.1f MB)", len(self.model) / 1e6)

    def matches(self, net: nn.Module) -> bool:
        """Whether net's weights are still exactly those exported (module docstring)."""
        now = _weights(net)
        return len(now) == len(self._exported) and all(
            t is s and t.data_ptr() == ptr and t._version == version
            for t, (s, ptr, version) in zip(now, self._exported, strict=True)
        )

    def _session(self):
        threads = torch.get_num_threads()
        if self.session is None or threads != self.threads:
            opts = self.ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self.session = self.ort.InferenceSession(
                self.model, opts, providers=["CPUExecutionProvider"]
            )
            self.threads = threads
        return self.session

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: int | torch.Tensor,
        global_cond: torch.Tensor,
    ) -> torch.Tensor:
        if sample.dim() != 3 or tuple(sample.shape[1:]) != self.sample_shape:
            raise ValueError(
                f"OnnxDenoiser: sample has shape {tuple(sample.shape)}, "
                f"expected (B, {', '.join(map(str, self.sample_shape))})"
            )
        B = sample.shape[0]
        if global_cond is None or tuple(global_cond.shape) != (B, self.cond_dim):
            got = None if global_cond is None else tuple(global_cond.shape)
            raise ValueError(
                f"OnnxDenoiser: global_cond has shape {got}, expected ({B}, {self.cond_dim})"
            )
        if sample.device.type != "cpu" or global_cond.device.type != "cpu":
            raise ValueError(f"OnnxDenoiser: inputs must be CPU tensors, got {sample.device}")
        t = batch_timesteps(timestep, B, sample.device, "OnnxDenoiser")  # (B,)
        feeds = {
            "sample": _array(sample, np.float32),  # (B, T, Da)
            "timestep": _array(t, np.int64),  # (B,)
            "cond": _array(global_cond, np.float32),  # (B, Dc)
        }
        (eps,) = self._session().run(None, feeds)
        return torch.from_numpy(eps)  # (B, T, Da)


def _array(x: torch.Tensor, dtype: type) -> np.ndarray:
    """x as a C-contiguous numpy array of dtype (no copy when it already is one)."""
    return np.ascontiguousarray(x.detach().numpy(), dtype=dtype)


__all__ = ["INSTALL_HINT", "OnnxDenoiser", "export_onnx", "import_onnxruntime"]
