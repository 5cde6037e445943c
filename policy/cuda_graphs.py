"""A whole denoising loop recorded once as a CUDA graph and replayed for every chunk.

Why. A UNet evaluation at batch 1 is ~150 small kernels; on a GPU the eager loop spends its time
launching them from Python, not running them (DDIM 10 of the 65.8 M UNet: 10 x 150 launches). A
CUDA graph (torch.cuda.CUDAGraph) records the kernels of one call of the loop with their
arguments and replays them all with one launch. The graph is the eager loop itself (the same
kernels on the same data), so it returns the eager chunk to float rounding (cuBLAS / cuDNN may
pick other algorithms; in full fp32 tests/test_cuda_graphs.py finds it within 1e-5 on a GPU).

Rules a graph imposes, and how GraphedCall meets them:

- fixed shapes and addresses: inputs are copied into static tensors that the graph reads, and
  the output is cloned out of the static tensor it writes. One GraphedCall per input shape
  (the policy pads a smaller batch up to the captured one).
- no host work inside: the loop (a sampler's ``sample``, policy/samplers.py) must take its
  timesteps and its per-step noise as device tensors (DiffusionPolicy.predict_action pre-draws
  the sampler's ``num_draws``, so the generators are used as in eager mode and the chunks match
  eager ones draw for draw).
- the parameters are read where they live. In-place writes (an optimizer step, EMA.update,
  load_state_dict, `p.copy_(w)`) are seen by the next replay. Replacing them (`.to()`, assigning
  new Parameters, `p.data = w`) would leave the graph reading memory that is no longer theirs:
  `matches` compares the tensors and their addresses with the captured ones, and the owner
  captures again when they differ.
- the fast layers' derived weight copies are not graph-safe (a refresh frees them), so the
  loop is captured with policy.fast_layers.fast_paths_disabled(): plain nn layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from dplite.policy.fast_layers import fast_paths_disabled


class GraphedCall:
    """fn(*inputs) -> Tensor, captured as one CUDA graph for these input shapes and dtypes.

    `params` are the tensors fn reads besides its inputs (a module's parameters and buffers);
    `warmup` eager calls on a side stream come first, as CUDA graph capture requires (they
    also let cuBLAS and cuDNN set up their handles and workspaces outside the graph).
    """

    def __init__(
        self,
        fn: Callable[..., torch.Tensor],
        inputs: Sequence[torch.Tensor],
        params: Sequence[torch.Tensor],
        warmup: int = 2,
    ):
        if not inputs or any(x.device.type != "cuda" for x in inputs):
            devices = sorted({str(x.device) for x in inputs})
            raise ValueError(f"CUDA graphs need CUDA tensors; got inputs on {devices}")
        # references, so that `is` in matches() cannot be fooled by a reused object id
        self._params = [(p, p.data_ptr()) for p in params]
        self.inputs = [x.detach().clone() for x in inputs]
        self.shapes = [(tuple(x.shape), x.dtype) for x in inputs]
        self.batch = inputs[0].shape[0]
        self.device = inputs[0].device
        # streams and graphs belong to the current device: make it the inputs' one (cuda:1...)
        with torch.cuda.device(self.device), fast_paths_disabled():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    fn(*self.inputs)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.output = fn(*self.inputs)

    def matches(self, params: Sequence[torch.Tensor]) -> bool:
        """Whether `params` are still the tensors, at the addresses, the graph reads."""
        return len(params) == len(self._params) and all(
            p is q and p.data_ptr() == ptr
            for p, (q, ptr) in zip(params, self._params, strict=False)
        )

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        shapes = [(tuple(x.shape), x.dtype) for x in inputs]
        if shapes != self.shapes:
            raise ValueError(f"graph captured for inputs {self.shapes}; got {shapes}")
        with torch.cuda.device(self.device):
            for static, x in zip(self.inputs, inputs, strict=True):
                static.copy_(x)
            self.graph.replay()
            return self.output.clone()  # the static output is overwritten by the next replay


__all__ = ["GraphedCall"]
