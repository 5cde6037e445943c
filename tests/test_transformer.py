"""Tests for policy/transformer.py, the time-series diffusion transformer of Diffusion Policy
(Chi et al. 2023), and for the `backbone` option that puts it in a DiffusionPolicy.

The architecture is pinned two independent ways: its parameter count for the reference's PushT
low-dim config equals a count by hand from the reference's layer list, and its outputs equal
those of an oracle assembled from torch's own nn.TransformerDecoder / EncoderLayer (pre-LN,
GELU, the reference's additive masks) carrying the same weights. Then the causal masks, shapes
and gradients, the AdamW weight-decay groups, checkpoints, every sampler through one
predict_action interface, a two-mode task, and dp-train / dp-distill with --backbone transformer.
"""

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from dplite.envs.options import run_command
from dplite.policy.checkpoint import load_state
from dplite.policy.diffusion import DiffusionPolicy, PolicyConfig
from dplite.policy.encoders import CameraConfig
from dplite.policy.normalizer import Normalizer
from dplite.policy.training import optimizer_groups
from dplite.policy.transformer import TransformerForDiffusion
from dplite.policy.unet1d import ConditionalUnet1D
from dplite.scripts import collect, distill, train

# the reference's PushT low-dim transformer (train_diffusion_transformer_lowdim_pusht_workspace
# .yaml): Da 2, obs 20 (9 keypoints x 2 + agent xy) per step, T 16, To 2, n_layer 8, n_head 4,
# n_emb 256, causal, time and observations as conditioning tokens, n_cond_layers 0
REF = dict(input_dim=2, cond_dim=20, horizon=16, n_obs_steps=2)
TINY = dict(n_layer=2, n_head=2, n_emb=16, p_drop_emb=0.0, p_drop_attn=0.0)
TINY_POLICY = dict(backbone="transformer", **TINY)


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _tiny(**kw) -> TransformerForDiffusion:
    torch.manual_seed(0)
    return TransformerForDiffusion(**{**REF, **TINY, **kw})


def _scramble(net: nn.Module, std: float = 0.3) -> nn.Module:
    """Random values in every parameter (LayerNorm gains and biases too), so that no layer
    hides behind its identity-like initialization."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    if hasattr(net, "refresh_fast_paths"):
        net.refresh_fast_paths()
    return net


# ------------------------------------------------------------------ parameter count
def _reference_count_by_hand(
    Da: int, Do: int, T: int, To: int, L: int, C: int, n_cond_layers: int = 0
) -> int:
    """The reference's TransformerForDiffusion, layer by layer (Linear: in * out + out;
    nn.MultiheadAttention: in_proj 3 C^2 + 3 C, out_proj C^2 + C; LayerNorm: 2 C)."""
    lin = lambda i, o: i * o + o  # noqa: E731
    mha = 3 * C * C + 3 * C + lin(C, C)
    ffn = lin(C, 4 * C) + lin(4 * C, C)
    decoder_layer = 2 * mha + ffn + 3 * 2 * C  # self-attn, cross-attn, MLP, norm1..3
    encoder_layer = mha + ffn + 2 * 2 * C
    cond_encoder = n_cond_layers * encoder_layer if n_cond_layers else ffn  # MLP C->4C->C
    return (
        lin(Da, C)  # input_emb
        + T * C  # pos_emb
        + lin(Do, C)  # cond_obs_emb
        + (1 + To) * C  # cond_pos_emb: the time token and To observation tokens
        + cond_encoder
        + L * decoder_layer
        + 2 * C  # ln_f
        + lin(C, Da)  # head
    )


def test_parameter_count_equals_the_reference_pusht_lowdim_transformer():
    # counted by hand from the reference's modules (see _reference_count_by_hand) ...
    expected = _reference_count_by_hand(2, 20, 16, 2, L=8, C=256)
    assert expected == 8_965_122
    net = TransformerForDiffusion(**REF)  # the defaults are the reference's hyperparameters
    assert _n_params(net) == expected
    # ... and by torch's own layers assembled as the reference assembles them
    assert _n_params(_Oracle(**REF, n_layer=8, n_head=4, n_emb=256)) == expected


@pytest.mark.parametrize("n_cond_layers", [1, 3])
def test_parameter_count_with_an_encoder_over_the_conditioning_tokens(n_cond_layers):
    net = TransformerForDiffusion(**REF, n_layer=2, n_emb=64, n_cond_layers=n_cond_layers)
    expected = _reference_count_by_hand(2, 20, 16, 2, L=2, C=64, n_cond_layers=n_cond_layers)
    assert _n_params(net) == expected


# ------------------------------------------------------------------ oracle: torch's layers
class _Oracle(nn.Module):
    """The reference design from torch's nn.Transformer* layers (pre-LN, GELU, 4C MLP,
    batch-first), its additive -inf masks and its sinusoidal time embedding; dropout off."""

    def __init__(self, input_dim, cond_dim, horizon, n_obs_steps, n_layer, n_head, n_emb,
                 causal_attn=True, n_cond_layers=0):  # fmt: skip
        super().__init__()
        C, T, S = n_emb, horizon, 1 + n_obs_steps
        self.n_emb, self.To, self.Do = C, n_obs_steps, cond_dim
        self.input_emb = nn.Linear(input_dim, C)
        self.pos_emb = nn.Parameter(torch.zeros(1, T, C))
        self.cond_obs_emb = nn.Linear(cond_dim, C)
        self.cond_pos_emb = nn.Parameter(torch.zeros(1, S, C))
        layer = dict(d_model=C, nhead=n_head, dim_feedforward=4 * C, dropout=0.0,
                     activation="gelu", batch_first=True, norm_first=True)  # fmt: skip
        if n_cond_layers:
            self.encoder = nn.TransformerEncoder(
                nn.TransformerEncoderLayer(**layer), n_cond_layers, enable_nested_tensor=False
            )
        else:
            self.encoder = nn.Sequential(nn.Linear(C, 4 * C), nn.Mish(), nn.Linear(4 * C, C))
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer), n_layer)
        self.ln_f = nn.LayerNorm(C)
        self.head = nn.Linear(C, input_dim)
        self.tgt_mask = self.memory_mask = None
        if causal_attn:  # the reference's formulas: 0 where allowed, -inf elsewhere
            t, s = torch.meshgrid(torch.arange(T), torch.arange(S), indexing="ij")
            self.tgt_mask = torch.zeros(T, T).masked_fill(torch.ones(T, T).triu(1) == 1, -math.inf)
            self.memory_mask = torch.zeros(T, S).masked_fill(~(t >= s - 1), -math.inf)

    def forward(self, sample, t, cond):
        B, half = sample.shape[0], self.n_emb // 2
        freqs = torch.exp(torch.arange(half) * -(math.log(10000) / (half - 1)))
        arg = t.float()[:, None] * freqs[None]
        time_emb = torch.cat([arg.sin(), arg.cos()], -1)[:, None]  # (B, 1, C)
        obs_emb = self.cond_obs_emb(cond.view(B, self.To, self.Do))  # (B, To, C)
        memory = self.encoder(torch.cat([time_emb, obs_emb], 1) + self.cond_pos_emb)
        x = self.input_emb(sample) + self.pos_emb
        x = self.decoder(x, memory, tgt_mask=self.tgt_mask, memory_mask=self.memory_mask)
        return self.head(self.ln_f(x))

    def load_from(self, net: TransformerForDiffusion) -> None:
        """Copy net's weights into the oracle's layout (q | k | v stacked as in_proj)."""
        src = net.state_dict()
        out = {}
        for name in ("input_emb", "cond_obs_emb", "head", "ln_f"):
            for p in ("weight", "bias"):
                out[f"{name}.{p}"] = src[f"{name}.{p}"]
        out["pos_emb"], out["cond_pos_emb"] = src["pos_emb"], src["cond_pos_emb"]

        def block(dst: str, mine: str, cross: bool) -> None:
            for p in ("weight", "bias"):
                out[f"{dst}.self_attn.in_proj_{p}"] = src[f"{mine}.self_attn.qkv_proj.{p}"]
                out[f"{dst}.self_attn.out_proj.{p}"] = src[f"{mine}.self_attn.out_proj.{p}"]
                out[f"{dst}.linear1.{p}"] = src[f"{mine}.fc1.{p}"]
                out[f"{dst}.linear2.{p}"] = src[f"{mine}.fc2.{p}"]
                out[f"{dst}.norm1.{p}"] = src[f"{mine}.norm1.{p}"]
                if cross:
                    q, kv = (
                        src[f"{mine}.cross_attn.q_proj.{p}"],
                        src[f"{mine}.cross_attn.kv_proj.{p}"],
                    )
                    out[f"{dst}.multihead_attn.in_proj_{p}"] = torch.cat([q, kv])
                    out[f"{dst}.multihead_attn.out_proj.{p}"] = src[
                        f"{mine}.cross_attn.out_proj.{p}"
                    ]
                    out[f"{dst}.norm2.{p}"] = src[f"{mine}.norm2.{p}"]
                    out[f"{dst}.norm3.{p}"] = src[f"{mine}.norm3.{p}"]
                else:  # an encoder layer's second norm is the one before its MLP
                    out[f"{dst}.norm2.{p}"] = src[f"{mine}.norm3.{p}"]

        for i in range(len(net.decoder)):
            block(f"decoder.layers.{i}", f"decoder.{i}", cross=True)
        if isinstance(net.encoder, nn.Sequential):
            for i in (0, 2):
                for p in ("weight", "bias"):
                    out[f"encoder.{i}.{p}"] = src[f"encoder.{i}.{p}"]
        else:
            for i in range(len(net.encoder)):
                block(f"encoder.layers.{i}", f"encoder.{i}", cross=False)
        self.load_state_dict(out)  # strict: every oracle parameter is covered


@pytest.mark.parametrize(
    "causal_attn, n_cond_layers",
    [(True, 0), (False, 0), (True, 2)],
    ids=["causal", "full", "encoder"],
)
def test_outputs_equal_an_oracle_of_torch_transformer_layers(causal_attn, n_cond_layers):
    kw = dict(
        **REF, n_layer=2, n_head=4, n_emb=32, causal_attn=causal_attn, n_cond_layers=n_cond_layers
    )
    net = _scramble(TransformerForDiffusion(**kw, p_drop_emb=0.0, p_drop_attn=0.0)).eval()
    oracle = _Oracle(**kw).eval()
    oracle.load_from(net)
    torch.manual_seed(2)
    sample, cond = torch.randn(3, 16, 2), torch.randn(3, 40)
    t = torch.tensor([0, 37, 99])
    with torch.no_grad():
        want = oracle(sample, t, cond)
        got_fast = net(sample, t, cond)  # eval + no_grad: the FastLinear paths
    got = net.train()(sample, t, cond)  # train mode (no dropout here): the plain layers
    assert want.abs().mean() > 0.1  # a real signal, not a near-zero output
    torch.testing.assert_close(got_fast, want, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got.detach(), want, atol=2e-5, rtol=1e-4)


# ------------------------------------------------------------------ masks
def test_a_future_action_token_cannot_change_an_earlier_output():
    net = _scramble(_tiny()).eval()
    torch.manual_seed(3)
    x, cond = torch.randn(2, 16, 2), torch.randn(2, 40)
    with torch.no_grad():
        base = net(x, 10, cond)
        for j in (1, 7, 15):
            x2 = x.clone()
            x2[:, j:] += torch.randn(2, 16 - j, 2)  # perturb index j and everything after it
            out = net(x2, 10, cond)
            torch.testing.assert_close(out[:, :j], base[:, :j], atol=1e-6, rtol=0)
            assert (out[:, j] - base[:, j]).abs().max() > 1e-3
    # without the causal mask the same perturbation reaches back to index 0
    full = _scramble(_tiny(causal_attn=False)).eval()
    with torch.no_grad():
        x2 = x.clone()
        x2[:, 15] += 1.0
        assert (full(x2, 10, cond)[:, 0] - full(x, 10, cond)[:, 0]).abs().max() > 1e-4


def test_the_newest_observation_is_hidden_from_chunk_index_zero():
    """The reference's memory mask (token s visible to index i when i >= s - 1, token 0 the
    time): chunk index i, the time of observation step i, sees observation steps 0 ... i; with
    To = 2, index 0 sees only the older observation, every later index both."""
    net = _scramble(_tiny()).eval()
    torch.manual_seed(4)
    x, cond = torch.randn(2, 16, 2), torch.randn(2, 40)
    newer = cond.clone()
    newer[:, 20:] += torch.randn(2, 20)  # the second (newest) step's 20 features
    with torch.no_grad():
        a, b = net(x, 5, cond), net(x, 5, newer)
    torch.testing.assert_close(a[:, 0], b[:, 0], atol=1e-6, rtol=0)
    assert (a[:, 1:] - b[:, 1:]).abs().amax(dim=(0, 2)).min() > 1e-4  # every later index


# ------------------------------------------------------------------ shapes, inputs, gradients
@pytest.mark.parametrize("B", [1, 5])
def test_output_shape_and_gradient_reaches_every_parameter(B):
    net = _tiny(p_drop_emb=0.1, p_drop_attn=0.1).train()
    x = torch.randn(B, 16, 2, requires_grad=True)
    out = net(x, torch.randint(0, 100, (B,)), torch.randn(B, 40))
    assert out.shape == (B, 16, 2)
    out.square().mean().backward()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad
    assert x.grad.abs().sum() > 0


def test_int_0d_and_batched_timesteps_agree_and_timestep_matters():
    net = _scramble(_tiny()).eval()
    x, cond = torch.randn(3, 16, 2), torch.randn(3, 40)
    with torch.no_grad():
        a = net(x, 7, cond)
        b = net(x, torch.tensor(7), cond)
        c = net(x, torch.tensor([7]), cond)
        d = net(x, torch.full((3,), 7), cond)
        e = net(x, 70, cond)
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, d)
    assert (a - e).abs().max() > 1e-3


@pytest.mark.parametrize(
    "sample_shape, cond_shape, t, match",
    [
        ((2, 8, 2), (2, 40), 0, "expected \\(B, 16, 2\\)"),
        ((2, 16, 3), (2, 40), 0, "expected \\(B, 16, 2\\)"),
        ((2, 16, 2), (2, 20), 0, "global_cond has shape \\(2, 20\\), expected \\(2, 40\\)"),
        ((2, 16, 2), None, 0, "global_cond has shape None"),
        ((2, 16, 2), (2, 40), torch.zeros(3, dtype=torch.long), "timestep has shape \\(3,\\)"),
    ],
)
def test_bad_inputs_are_refused_with_the_expected_shape(sample_shape, cond_shape, t, match):
    net = _tiny()
    cond = None if cond_shape is None else torch.randn(cond_shape)
    with pytest.raises(ValueError, match=match):
        net(torch.randn(sample_shape), t, cond)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_emb=30, n_head=4), "n_emb=30 must be an even number >= 4 divisible by n_head=4"),
        (dict(n_layer=0), "n_layer=0"),
        (dict(p_drop_attn=1.0), "p_drop_attn=1.0"),
        (dict(n_cond_layers=-1), "n_cond_layers=-1"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransformerForDiffusion(**{**REF, **kwargs})
    with pytest.raises(ValueError, match=match.split("=")[0]):
        PolicyConfig(backbone="transformer", **kwargs)


def test_batch_rows_do_not_interact_and_fast_path_serves_new_weights():
    net = _scramble(_tiny()).eval()
    x, cond, t = torch.randn(4, 16, 2), torch.randn(4, 40), torch.tensor([3, 50, 80, 99])
    with torch.inference_mode():
        whole = net(x, t, cond)
        rows = torch.cat([net(x[i : i + 1], t[i : i + 1], cond[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(whole, rows, atol=1e-5, rtol=1e-5)
    # load_state_dict drops the FastLinear caches: the next no-grad call uses the new weights
    other = _scramble(_tiny(), std=0.5)
    net.load_state_dict(other.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(net(x, t, cond), other.eval()(x, t, cond))


# ------------------------------------------------------------------ weight decay groups
def test_weight_decay_falls_only_on_linear_weights_as_in_the_reference():
    net = TransformerForDiffusion(**REF)
    decay, no_decay = net.optim_groups(0.1)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    names = {id(p): n for n, p in net.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decayed.isdisjoint(kept) and decayed | kept == set(names.values())
    assert "pos_emb" in kept and "cond_pos_emb" in kept
    assert all(n.endswith(".weight") for n in decayed)
    assert all(n.endswith(".bias") or "norm" in n or n in ("pos_emb", "cond_pos_emb", "ln_f.weight")
               for n in kept)  # fmt: skip
    # the reference decays every Linear and MultiheadAttention weight: count those by hand
    C, L = 256, 8
    by_hand = (2 * C + 20 * C + C * 2  # input_emb, cond_obs_emb, head
               + 2 * 4 * C * C  # the conditioning MLP
               + L * (2 * (3 * C * C + C * C) + 2 * 4 * C * C))  # attention x2, MLP  # fmt: skip
    assert sum(p.numel() for p in decay["params"]) == by_hand


def test_optimizer_groups_unet_single_group_transformer_three():
    """UNet: one group at weight_decay with every parameter (the loop as before). Transformer
    with a camera: its Linear weights at the transformer decay, the rest of it at 0, and the
    camera encoder at weight_decay; then an AdamW step on zero gradients shrinks exactly the
    decayed parameters, each by lr * its group's decay."""
    unet = DiffusionPolicy(PolicyConfig(obs_shapes={"s": (2,)}, down_dims=(8, 16), n_groups=4))
    (group,) = optimizer_groups(unet, 1e-6, 0.1)
    assert group["weight_decay"] == 1e-6 and group["params"] == list(unet.parameters())

    cfg = PolicyConfig(
        obs_shapes={"img": (16, 16, 3), "s": (2,)},
        cameras={"img": CameraConfig(backbone="small", crop_size=None, feature_dim=8)},
        **TINY_POLICY,
    )
    policy = DiffusionPolicy(cfg)
    groups = optimizer_groups(policy, 1e-6, 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0, 1e-6]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in policy.parameters())  # each exactly once
    assert {id(p) for p in groups[2]["params"]} == {id(p) for p in policy.obs_encoder.parameters()}

    before = [[p.detach().clone() for p in g["params"]] for g in groups]
    for p in policy.parameters():
        p.grad = torch.zeros_like(p)
    opt = torch.optim.AdamW(groups, lr=0.5)
    opt.step()
    for g, old in zip(groups, before, strict=True):
        for p, p0 in zip(g["params"], old, strict=True):
            torch.testing.assert_close(p.detach(), p0 * (1 - 0.5 * g["weight_decay"]))


def test_unet_optimizer_steps_exactly_as_a_plain_adamw_over_all_parameters():
    """The UNet path is unchanged: AdamW over optimizer_groups equals AdamW(policy.parameters())
    bit for bit, step after step, and saves the same param_groups (old checkpoints resume)."""
    torch.manual_seed(0)
    policy = DiffusionPolicy(PolicyConfig(obs_shapes={"s": (2,)}, down_dims=(8, 16), n_groups=4))
    twin = copy.deepcopy(policy)
    kw = dict(lr=1e-2, betas=(0.95, 0.999), weight_decay=1e-6)
    plain = torch.optim.AdamW(policy.parameters(), **kw)
    grouped = torch.optim.AdamW(optimizer_groups(twin, 1e-6, 0.1), **kw)
    for step in range(3):
        gen = torch.Generator().manual_seed(step)
        for a, b in zip(policy.parameters(), twin.parameters(), strict=True):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        plain.step()
        grouped.step()
    assert all(
        torch.equal(a, b) for a, b in zip(policy.parameters(), twin.parameters(), strict=True)
    )
    assert plain.state_dict()["param_groups"] == grouped.state_dict()["param_groups"]


# ------------------------------------------------------------------ the policy
def _policy(backbone: str, **kw) -> DiffusionPolicy:
    stats = {
        "s": {"min": np.array([-2.0, 0.0]), "max": np.array([2.0, 9.0])},
        "action": {"min": np.array([0.0, -1.0]), "max": np.array([5.0, 1.0])},
    }
    net = (
        TINY_POLICY
        if backbone == "transformer"
        else dict(down_dims=(8, 16), n_groups=4, diffusion_step_embed_dim=16)
    )
    torch.manual_seed(0)
    cfg = PolicyConfig(obs_shapes={"s": (2,)}, num_train_timesteps=20, **{**net, **kw})
    policy = DiffusionPolicy(cfg, Normalizer.from_stats(stats))
    if backbone == "transformer":
        _scramble(policy.net, std=0.2)
    return policy.eval()


def test_checkpoint_round_trip_records_the_backbone(tmp_path):
    policy = _policy("transformer", n_cond_layers=1)
    policy.save_pretrained(tmp_path / "p")
    saved = json.loads((tmp_path / "p" / "config.json").read_text())["config"]
    assert saved["backbone"] == "transformer" and saved["n_cond_layers"] == 1
    loaded = DiffusionPolicy.from_pretrained(tmp_path / "p")
    assert isinstance(loaded.net, TransformerForDiffusion) and loaded.cfg == policy.cfg
    obs = {"s": torch.randn(3, 2, 2)}
    for sampler, k in (("ddpm", 20), ("ddim", 4)):
        a = policy.predict_action(obs, sampler, k, generator=torch.Generator().manual_seed(0))
        b = loaded.predict_action(obs, sampler, k, generator=torch.Generator().manual_seed(0))
        assert torch.equal(a["action_pred"], b["action_pred"])
    # a config written before the field existed is a UNet
    old = {k: v for k, v in saved.items() if k != "backbone"}
    assert PolicyConfig.from_dict(old).backbone == "unet"
    assert PolicyConfig.from_dict(saved).backbone == "transformer"


def test_unknown_backbone_is_refused():
    with pytest.raises(ValueError, match="unknown backbone 'rnn'; use 'unet' or 'transformer'"):
        PolicyConfig(backbone="rnn")


def test_transformer_horizon_need_not_divide_like_the_unet():
    with pytest.raises(ValueError, match="divisible by 2"):
        PolicyConfig(horizon=10, down_dims=(32, 64, 128))
    policy = DiffusionPolicy(PolicyConfig(horizon=10, n_action_steps=4, **TINY_POLICY)).eval()
    assert policy.predict_action({"state": torch.randn(1, 2, 5)})["action_pred"].shape == (1, 10, 2)


@pytest.mark.parametrize("backbone", ["unet", "transformer"])
def test_both_backbones_through_one_sampler_interface(backbone):
    """Every sampler the config allows, for each backbone, through predict_action alone: the
    shapes and the executed slice; DDIM with k = K (eta 0) and DDPM agree on the timesteps
    they visit; each row's chunk depends only on its own generator and observation."""
    policy = _policy(backbone)
    cfg, B = policy.cfg, 3
    obs = {"s": torch.randn(B, 2, 2)}
    for sampler, k in (("ddpm", 20), ("ddpm", 5), ("ddim", 1), ("ddim", 5)):
        gens = [torch.Generator().manual_seed(i) for i in range(B)]
        out = policy.predict_action(obs, sampler, k, generator=gens, return_trajectory=True)
        assert out["action_pred"].shape == (B, cfg.horizon, 2)
        assert torch.equal(out["action"], out["action_pred"][:, 1 : 1 + cfg.n_action_steps])
        assert len(out["trajectory"]) == k + 1 and torch.isfinite(out["action_pred"]).all()
        # clip_sample keeps the normalized chunk in [-1, 1]: raw actions within the data range
        assert (out["action_pred"][..., 1].abs() <= 1 + 1e-5).all()
        one = policy.predict_action(
            {"s": obs["s"][1:2]}, sampler, k, generator=[torch.Generator().manual_seed(1)]
        )
        torch.testing.assert_close(one["action_pred"][0], out["action_pred"][1], atol=1e-5, rtol=0)
    # the regression objective: one evaluation of the same network, no noise
    mse = _policy(backbone, objective="mse")
    a = mse.predict_action(obs, "ddim", 5)
    assert mse.sampler_settings("ddim", 5) == ("mse", 1)
    with torch.no_grad():
        direct = mse.net(torch.zeros(B, cfg.horizon, 2), 0, mse.encode_obs(obs))
    torch.testing.assert_close(a["action_pred"], mse.normalizer.unnormalize("action", direct))
    # consistency: a distilled config of the same network
    cd = _policy(backbone, consistency_timesteps=(15, 10, 5, 0), sampler="consistency",
                 num_inference_steps=1)  # fmt: skip
    for k in (1, 2):
        out = cd.predict_action(obs, "consistency", k, generator=torch.Generator().manual_seed(0))
        assert out["action_pred"].shape == (B, cfg.horizon, 2)
    assert isinstance(
        policy.net, TransformerForDiffusion if backbone == "transformer" else ConditionalUnet1D
    )


def test_compute_loss_trains_the_transformer_under_every_objective():
    """compute_loss reaches every network parameter (the policy as DDP would wrap it)."""
    for objective in ("diffusion", "mse"):
        policy = _policy("transformer", objective=objective).train()
        batch = {"obs": {"s": torch.rand(4, 2, 2)}, "action": torch.rand(4, 16, 2)}
        policy(batch).backward()
        missing = [n for n, p in policy.net.named_parameters() if p.grad is None]
        assert not missing, (objective, missing)


def test_the_transformer_samples_both_modes_of_a_two_mode_task():
    """The reason for a diffusion policy, with this network: 2-D paths pass an obstacle left or
    right with equal probability; DDIM samples from a trained transformer take both sides and
    almost never the average path through the middle."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, T = 1024, 16
    s = np.linspace(0.0, 1.0, T)
    side = rng.choice([-1.0, 1.0], size=n)
    x0 = rng.uniform(-0.1, 0.1, size=n)
    xs = x0[:, None] * (1 - s) + side[:, None] * 0.8 * np.sin(math.pi * s)  # (n, T)
    action = np.stack([xs, np.broadcast_to(2 * s - 1, (n, T))], -1)  # (n, T, 2)
    action = torch.tensor(action + 0.01 * rng.standard_normal((n, T, 2)), dtype=torch.float32)
    obs = torch.tensor(np.stack([x0, -np.ones(n)], -1), dtype=torch.float32)[:, None].repeat(
        1, 2, 1
    )
    stats = {
        "pos": {"min": obs.amin((0, 1)).numpy(), "max": obs.amax((0, 1)).numpy()},
        "action": {"min": action.amin((0, 1)).numpy(), "max": action.amax((0, 1)).numpy()},
    }
    cfg = PolicyConfig(obs_shapes={"pos": (2,)}, backbone="transformer", n_layer=2, n_head=2,
                       n_emb=32, p_drop_attn=0.0)  # fmt: skip
    policy = DiffusionPolicy(cfg, Normalizer.from_stats(stats))
    steps = 400
    opt = torch.optim.AdamW(optimizer_groups(policy, 1e-6, 1e-3), lr=3e-3, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / 50) * 0.5 * (1 + math.cos(math.pi * i / steps))
    )
    for _ in range(steps):
        idx = torch.randint(0, n, (128,))
        loss = policy.compute_loss({"obs": {"pos": obs[idx]}, "action": action[idx]})
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    policy.eval()
    paths = policy.predict_action({"pos": obs[:200]}, "ddim", 10,
                                  generator=torch.Generator().manual_seed(1))["action_pred"]  # fmt: skip
    mid = paths[:, T // 2 - 1 : T // 2 + 1, 0].mean(1)  # x where the path passes the obstacle
    left, right = (mid < -0.35).float().mean().item(), (mid > 0.35).float().mean().item()
    # measured 0.50 / 0.43 / 0.07; the MSE regressor of tests/test_diffusion.py puts > 0.9 of
    # its paths in the middle
    assert left >= 0.3 and right >= 0.3, (left, right)
    assert 1 - left - right < 0.15, (left, right)


# ------------------------------------------------------------------ dp-train, dp-distill
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pusht.zarr"
    collect.main(collect.Config(episodes=2, out=path, progress=False))
    return path


def test_dp_train_with_backbone_transformer_then_distill(dataset, tmp_path):
    """20 steps of dp-train from its command line with --backbone transformer: the policy
    folder records the network, the checkpoint's AdamW has the reference's groups, and a
    2-step dp-distill takes it as the teacher."""
    args = [
        "--dataset", dataset, "--out", tmp_path / "run", "--backbone", "transformer",
        "--n-layer", 1, "--n-head", 2, "--n-emb", 16, "--p-drop-attn", 0.1,
        "--transformer-weight-decay", 0.05, "--batch-size", 8, "--steps", 20,
        "--warmup-steps", 5, "--log-every", 10, "--save-every", 20, "--eval-every", -1,
        "--val-ratio", 0, "--no-progress",
    ]  # fmt: skip
    summary = run_command(train.main, train.Config, "dp-train", [str(a) for a in args])
    assert summary["step"] == 20
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [10, 20]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in lines)
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000020"
    policy = DiffusionPolicy.from_pretrained(ckpt)
    assert policy.cfg.backbone == "transformer" and policy.cfg.n_emb == 16
    assert isinstance(policy.net, TransformerForDiffusion) and len(policy.net.decoder) == 1
    decays = [g["weight_decay"] for g in load_state(ckpt)["optimizer"]["param_groups"]]
    assert decays == [0.05, 0.0]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["backbone"] == "transformer"
    obs = {"agent_pos": torch.rand(1, 2, 2) * 500, "keypoint": torch.rand(1, 2, 9, 2) * 500}
    obs = {k: v for k, v in obs.items() if k in policy.cfg.obs_shapes}
    assert policy.predict_action(obs)["action"].shape == (1, policy.cfg.n_action_steps, 2)

    cd = distill.distill(
        distill.Config(checkpoint=ckpt, out=tmp_path / "cd", steps=2, batch_size=8,
                       warmup_steps=1, log_every=1, eval_episodes=0, progress=False)
    )  # fmt: skip
    assert math.isfinite(cd["teacher_gap"])
    student = DiffusionPolicy.from_pretrained(tmp_path / "cd")
    assert isinstance(student.net, TransformerForDiffusion)
    assert student.predict_action(obs, "consistency", 1)["action"].shape[0] == 1


def test_deepcopy_of_a_used_transformer_policy_is_identical():
    """EMA deep-copies the policy after inference: the FastLinear caches must not travel."""
    policy = _policy("transformer")
    obs = {"s": torch.randn(2, 2, 2)}
    a = policy.predict_action(obs, "ddim", 3, generator=torch.Generator().manual_seed(0))
    twin = copy.deepcopy(policy)
    b = twin.predict_action(obs, "ddim", 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a["action_pred"], b["action_pred"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replay_of_a_transformer_policy_equals_eager():
    """The captured denoising loop (DiffusionPolicy.use_cuda_graphs) with this network: the
    forward pass does device work only, so the replay gives the eager chunk, sees an in-place
    weight write, and pads a smaller batch to the captured one."""
    torch.backends.cuda.matmul.allow_tf32 = False
    policy = _policy("transformer").cuda()
    obs = {"s": torch.randn(4, 2, 2, device="cuda")}
    for sampler, k in (("ddim", 5), ("ddpm", 20)):
        eager = policy.predict_action(
            obs, sampler, k, generator=torch.Generator("cuda").manual_seed(0)
        )
        policy.use_cuda_graphs()
        for _ in range(2):  # capture, then replay
            graph = policy.predict_action(
                obs, sampler, k, generator=torch.Generator("cuda").manual_seed(0)
            )
            torch.testing.assert_close(
                graph["action_pred"], eager["action_pred"], atol=1e-4, rtol=0
            )
        small = policy.predict_action(
            {"s": obs["s"][:2]}, sampler, k, generator=torch.Generator("cuda").manual_seed(0)
        )
        assert small["action_pred"].shape[0] == 2
        policy.use_cuda_graphs(False)
    gen = lambda: torch.Generator("cuda").manual_seed(0)  # noqa: E731
    policy.use_cuda_graphs()
    before = policy.predict_action(obs, "ddim", 5, generator=gen())  # captured here
    with torch.no_grad():
        policy.net.head.bias.add_(0.5)  # in place: the next replay must read it
    replay = policy.predict_action(obs, "ddim", 5, generator=gen())
    policy.use_cuda_graphs(False)
    eager = policy.predict_action(obs, "ddim", 5, generator=gen())
    torch.testing.assert_close(replay["action_pred"], eager["action_pred"], atol=1e-4, rtol=0)
    assert (replay["action_pred"] - before["action_pred"]).abs().max() > 1e-3
