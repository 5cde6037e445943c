"""Pickle-free checkpoints: nested training state round trip and clear errors on corruption."""

import pickle

import pytest
import torch
from torch import nn

from dplite.policy.checkpoint import CheckpointError, load_state, load_tensors, save_state


def _trained_optimizer():
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.95, 0.999))
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 3)).square().sum().backward()
        opt.step()
    return model, opt


def test_optimizer_and_rng_state_round_trip(tmp_path):
    model, opt = _trained_optimizer()
    state = {"step": 7, "optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "t": (1, 2.5)}
    save_state(state, tmp_path)
    loaded = load_state(tmp_path)
    assert loaded["step"] == 7 and loaded["t"] == (1, 2.5)
    assert torch.equal(loaded["rng"], state["rng"])
    # the restored optimizer takes exactly the same next step
    model2 = nn.Linear(3, 2)
    model2.load_state_dict(model.state_dict())
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3, betas=(0.95, 0.999))
    opt2.load_state_dict(loaded["optimizer"])
    x = torch.randn(4, 3)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).square().sum().backward()
        o.step()
    torch.testing.assert_close(model2.weight, model.weight, rtol=0, atol=0)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    """Every unpickling entry point raises during the loads: state and policy still load."""
    from dplite.policy.diffusion import DiffusionPolicy, PolicyConfig

    model, opt = _trained_optimizer()
    rng = torch.get_rng_state()
    save_state({"optimizer": opt.state_dict(), "rng": rng}, tmp_path / "s")
    policy = DiffusionPolicy(
        PolicyConfig(obs_shapes={"s": (2,)}, down_dims=(8, 16), diffusion_step_embed_dim=8)
    )
    policy.save_pretrained(tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["state.json", "state.safetensors"]

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load tried to unpickle")

    for mod, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                      (torch, "load")):  # fmt: skip
        monkeypatch.setattr(mod, name, refuse)
    loaded = load_state(tmp_path / "s")
    assert torch.equal(loaded["rng"], rng)
    assert loaded["optimizer"]["state"][0]["step"].item() == 2
    again = DiffusionPolicy.from_pretrained(tmp_path / "p")
    for a, b in zip(again.state_dict().values(), policy.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_corrupt_files_raise_checkpoint_error(tmp_path):
    save_state({"w": torch.ones(2)}, tmp_path)
    (tmp_path / "state.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="state.safetensors"):
        load_state(tmp_path)
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt JSON"):
        load_state(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_tensors(tmp_path / "missing.safetensors")
