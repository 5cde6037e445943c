"""policy/encoders.py: spatial softmax against hand-computed coordinates, crops against hand
slices, trunk sizes against a hand count, encoder output shapes and layout, bad input."""

import numpy as np
import pytest
import torch
from torch import nn

from dplite.policy.encoders import (
    CameraConfig,
    ImageEncoder,
    ObsEncoder,
    ResNet18GN,
    SmallCNN,
    SpatialSoftmax,
    center_crop,
    random_crop,
    to_float_chw,
)


# ------------------------------------------------------------------ spatial softmax
def identity_head(channels: int, h: int, w: int) -> SpatialSoftmax:
    """A spatial softmax whose 1x1 conv passes each channel through as its keypoint map."""
    head = SpatialSoftmax(channels, h, w, num_kp=channels)
    with torch.no_grad():
        head.conv.weight.copy_(torch.eye(channels)[:, :, None, None])
        head.conv.bias.zero_()
    return head


def test_spatial_softmax_one_bright_spot_gives_hand_computed_coordinates():
    h, w, v = 5, 7, 3.0
    head = identity_head(2, h, w)
    maps = torch.zeros(1, 2, h, w)
    maps[0, 0, 1, 5] = v  # keypoint 0: row 1, column 5
    maps[0, 1, 4, 0] = v  # keypoint 1: row 4, column 0
    # Softmax weight e^v on the spot and 1 on each of the other N - 1 pixels. The grid's x (and
    # y) values sum to 0, so the other pixels sum to -x_spot:
    #   E[x] = (e^v x_s - x_s) / (e^v + N - 1) = x_s (e^v - 1) / (e^v + N - 1)
    shrink = (np.exp(v) - 1) / (np.exp(v) + h * w - 1)
    x = lambda j: -1 + 2 * j / (w - 1)  # noqa: E731
    y = lambda i: -1 + 2 * i / (h - 1)  # noqa: E731
    expected = [x(5) * shrink, y(1) * shrink, x(0) * shrink, y(4) * shrink]
    torch.testing.assert_close(head(maps), torch.tensor([expected], dtype=torch.float32))


def test_spatial_softmax_sharp_spot_lands_on_its_pixel_and_corners_are_plus_minus_one():
    head = identity_head(3, 4, 6)
    maps = torch.full((1, 3, 4, 6), -1e4)
    maps[0, 0, 0, 0] = maps[0, 1, 3, 5] = maps[0, 2, 2, 3] = 0.0  # one-hot after softmax
    out = head(maps).view(3, 2)  # (K, (x, y))
    torch.testing.assert_close(out[0], torch.tensor([-1.0, -1.0]))  # top-left
    torch.testing.assert_close(out[1], torch.tensor([1.0, 1.0]))  # bottom-right
    torch.testing.assert_close(out[2], torch.tensor([-1 + 2 * 3 / 5, -1 + 2 * 2 / 3]))


def test_spatial_softmax_uniform_map_is_the_centre_and_temperature_is_learnable():
    head = SpatialSoftmax(4, 6, 6, num_kp=8, learnable_temperature=True)
    with torch.no_grad():
        head.conv.weight.zero_()
    out = head(torch.randn(2, 4, 6, 6))
    torch.testing.assert_close(out, torch.zeros(2, 16), atol=1e-6, rtol=0)
    assert isinstance(head.temperature, nn.Parameter)
    assert "temperature" not in dict(SpatialSoftmax(4, 6, 6).named_parameters())


# ------------------------------------------------------------------ crops
def coordinate_images(n: int, h: int, w: int) -> torch.Tensor:
    """uint8 (n, h, w, 3): channel 0 = row, 1 = column, 2 = image index."""
    rows = torch.arange(h)[None, :, None].expand(n, h, w)
    cols = torch.arange(w)[None, None, :].expand(n, h, w)
    idx = torch.arange(n)[:, None, None].expand(n, h, w)
    return torch.stack([rows, cols, idx], dim=-1).to(torch.uint8)


def test_center_crop_is_the_hand_slice():
    images = coordinate_images(3, 11, 10)
    out = center_crop(images, (6, 4))
    torch.testing.assert_close(out, images[:, 2:8, 3:7])  # (11 - 6) // 2, (10 - 4) // 2


def test_random_crop_draws_per_sample_offsets_and_each_crop_is_a_hand_slice():
    n, h, w, ch, cw = 64, 12, 10, 8, 5
    images = coordinate_images(n, h, w)
    gen = torch.Generator().manual_seed(0)
    offsets = []
    for _ in range(2):
        out = random_crop(images, (ch, cw), generator=gen)
        assert out.shape == (n, ch, cw, 3) and out.dtype == torch.uint8
        for i in range(n):
            top, left = int(out[i, 0, 0, 0]), int(out[i, 0, 0, 1])
            assert 0 <= top <= h - ch and 0 <= left <= w - cw
            torch.testing.assert_close(out[i], images[i, top : top + ch, left : left + cw])
            offsets.append((top, left))
    first, second = offsets[:n], offsets[n:]
    assert len(set(first)) > 10  # samples of one batch get different offsets
    assert first != second  # and another call draws new ones
    tops = {t for t, _ in offsets}
    lefts = {c for _, c in offsets}
    assert tops == set(range(h - ch + 1)) and lefts == set(range(w - cw + 1))  # all reachable


def test_image_encoder_crops_at_random_in_train_mode_and_centered_in_eval_mode():
    enc = ImageEncoder((12, 12, 3), CameraConfig(backbone="small", crop_size=(8, 8)))
    images = coordinate_images(16, 12, 12)
    enc.train()
    train_crops = enc.crop(images)
    assert len({(int(c[0, 0, 0]), int(c[0, 0, 1])) for c in train_crops}) > 1
    enc.eval()
    torch.testing.assert_close(enc.crop(images), images[:, 2:10, 2:10])
    x = torch.randint(0, 256, (4, 12, 12, 3), dtype=torch.uint8)
    torch.testing.assert_close(enc(x), enc(x))  # eval: deterministic


def test_pixels_become_channel_first_floats_in_0_1():
    img = torch.zeros(1, 2, 3, 3, dtype=torch.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 0, 51, 255
    out = to_float_chw(img)
    assert out.shape == (1, 3, 2, 3) and out.dtype == torch.float32
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.0, 0.2, 1.0]))


# ------------------------------------------------------------------ trunks
def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_resnet18_gn_has_the_resnet18_trunk_parameter_count():
    # hand count: conv weights + 2 affine parameters per channel of every norm
    conv = lambda cin, cout, k: cin * cout * k * k  # noqa: E731
    norm = lambda c: 2 * c  # noqa: E731
    stem = conv(3, 64, 7) + norm(64)
    total, cin = stem, 64
    for width in (64, 128, 256, 512):
        first = conv(cin, width, 3) + conv(width, width, 3) + 2 * norm(width)
        if cin != width:
            first += conv(cin, width, 1) + norm(width)
        second = 2 * conv(width, width, 3) + 2 * norm(width)
        total, cin = total + first + second, width
    assert total == 11_176_512  # torchvision resnet18: 11,689,512 minus its fc's 513,000
    trunk = ResNet18GN()
    assert n_params(trunk) == total
    norms = [m for m in trunk.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == m.num_channels // 16 for m in norms)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in trunk.modules())
    assert trunk(torch.zeros(1, 3, 84, 84)).shape == (1, 512, 3, 3)


def test_encoder_heads_and_small_cnn_sizes():
    cam = CameraConfig(backbone="resnet18", crop_size=(84, 84), feature_dim=64, num_keypoints=32)
    enc = ImageEncoder((96, 96, 3), cam)
    # trunk + 1x1 conv 512 -> 32 keypoint maps + Linear 64 -> 64
    assert n_params(enc) == 11_176_512 + (512 * 32 + 32) + (64 * 64 + 64)
    small = SmallCNN()
    convs = (3 * 32 * 25 + 32) + (32 * 64 * 9 + 64) + 2 * (64 * 64 * 9 + 64)  # with biases
    norms = 2 * (32 + 64 + 64 + 64)
    assert n_params(small) == convs + norms == 95_232
    assert small(torch.zeros(1, 3, 84, 84)).shape == (1, 64, 21, 21)


# ------------------------------------------------------------------ ObsEncoder
def test_obs_encoder_shapes_for_one_and_two_cameras():
    B, To = 3, 2
    img = torch.randint(0, 256, (B, To + 1, 24, 24, 3), dtype=torch.uint8)  # longer history
    wrist = torch.randint(0, 256, (B, To, 16, 20, 3), dtype=torch.uint8)
    pos = torch.randn(B, To, 2)
    small = CameraConfig(backbone="small", crop_size=(20, 20), feature_dim=16, num_keypoints=8)
    one = ObsEncoder({"img": (24, 24, 3), "pos": (2,)}, {"img": small}, To)
    assert one.feature_dims == {"img": 16, "pos": 2} and one.output_dim == To * 18
    assert one({"img": img, "pos": pos}).shape == (B, To * 18)
    two = ObsEncoder(
        {"img": (24, 24, 3), "pos": (2,), "wrist": (16, 20, 3)},
        {"img": small, "wrist": CameraConfig(backbone="resnet18", feature_dim=10)},
        To,
    )
    assert two.output_dim == To * (16 + 2 + 10)
    out = two.eval()({"img": img, "pos": pos, "wrist": wrist})
    assert out.shape == (B, To * 28)
    # layout: per step [img 16 | pos 2 | wrist 10], steps oldest first; pos passes through
    steps = out.view(B, To, 28)
    torch.testing.assert_close(steps[:, :, 16:18], pos)
    alone = ObsEncoder({"img": (24, 24, 3)}, {"img": small}, To).eval()
    alone.cameras["img"] = two.cameras["img"]  # the same CNN, without the other keys
    torch.testing.assert_close(steps[:, :, :16], alone({"img": img}).view(B, To, 16))


def test_obs_encoder_without_cameras_is_the_flat_normalized_history():
    enc = ObsEncoder({"a": (2,), "b": (3, 2)}, {}, 2)
    a, b = torch.randn(4, 3, 2), torch.randn(4, 3, 3, 2)
    out = enc({"a": a, "b": b}, normalize=lambda key, x: 2 * x)
    want = torch.cat([2 * a[:, 1:], 2 * b[:, 1:].flatten(2)], dim=-1).flatten(1)
    torch.testing.assert_close(out, want)
    assert n_params(enc) == 0


@pytest.mark.parametrize(
    "name, value, match",
    [
        ("wrong size", torch.zeros(1, 2, 20, 24, 3, dtype=torch.uint8),
         r"obs\['img'\] has shape \(1, 2, 20, 24, 3\); expected \(B, >= 2, 24, 24, 3\)"),
        ("channel first", torch.zeros(1, 2, 3, 24, 24, dtype=torch.uint8),
         r"obs\['img'\] has shape \(1, 2, 3, 24, 24\); expected \(B, >= 2, 24, 24, 3\).*channel-first"),
        ("float", torch.zeros(1, 2, 24, 24, 3),
         r"obs\['img'\] has dtype torch.float32 with shape \(1, 2, 24, 24, 3\); expected torch.uint8.*\(B, >= 2, 24, 24, 3\)"),
        ("too few steps", torch.zeros(1, 1, 24, 24, 3, dtype=torch.uint8),
         r"obs\['img'\] has shape \(1, 1, 24, 24, 3\); expected \(B, >= 2, 24, 24, 3\)"),
        ("missing", None, r"missing camera key 'img' \(B, >= 2, 24, 24, 3\).*got \['pos'\]"),
    ],
)  # fmt: skip
def test_bad_image_input_names_the_key_and_both_shapes(name, value, match):
    enc = ObsEncoder({"img": (24, 24, 3), "pos": (2,)}, {"img": CameraConfig()}, 2)
    obs = {"pos": torch.zeros(1, 2, 2)}
    if value is not None:
        obs["img"] = value
    with pytest.raises(ValueError, match=match):
        enc(obs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(backbone="resnet50"), "unknown backbone 'resnet50'"),
        (dict(crop_size=(0, 4)), "crop_size"),
        (dict(feature_dim=0), "feature_dim must be >= 1"),
    ],
)
def test_bad_camera_config_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CameraConfig(**kwargs)


def test_crop_larger_than_the_image_is_refused():
    with pytest.raises(ValueError, match=r"crop_size \(30, 30\) exceeds the image"):
        ImageEncoder((24, 24, 3), CameraConfig(crop_size=(30, 30)))
