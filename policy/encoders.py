"""Observation encoder: low-dim keys pass through, each camera gets its own CNN.

Chi et al. 2023 (Diffusion Policy, Sec. 3.3 and App. A.2) encode every camera with its own
ResNet-18, trained from scratch, in which BatchNorm is replaced by GroupNorm (BatchNorm's
running statistics interact badly with the EMA of the weights) and the global average pool by
a spatial softmax keypoint head (Levine et al. 2016, "End-to-end training of deep visuomotor
policies"); images are randomly cropped during training and center-cropped at evaluation.
This file holds, top to bottom:

    CameraConfig     which CNN encodes one camera, its crop and feature size (JSON-able)
    SpatialSoftmax   feature maps -> expected (x, y) of each keypoint map, in [-1, 1]
    ResNet18GN       the ResNet-18 trunk with GroupNorm (groups = channels // 16)
    SmallCNN         four convolutions sized for training on a CPU
    center_crop, random_crop, to_float_chw
    ImageEncoder     uint8 (N, H, W, C) -> crop -> [0, 1] -> trunk -> keypoints -> (N, feature_dim)
    ObsEncoder       {key: (B, To, ...)} -> global condition (B, To * sum of per-key sizes)

Images arrive as stored in the dataset and emitted by the environments: uint8, channel-last
(H, W, C). Cropping runs on the uint8 batch on whatever device it lives on; only the crop is
converted to float.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import einops
import torch
from torch import nn

from dplite.policy.checkpoint import config_from_dict

Backbone = Literal["resnet18", "small"]
BACKBONES = ("resnet18", "small")


@dataclass
class CameraConfig:
    """How one camera is encoded; saved inside PolicyConfig.cameras as a plain dict."""

    backbone: Backbone = "small"
    """"resnet18": the paper's ResNet-18 with GroupNorm (11.2 M parameters); "small": four
    convolutions (about 0.1 M parameters) that train at a useful rate on a CPU."""
    crop_size: tuple[int, int] | None = None
    """(h, w) of the random crop in training and the center crop in evaluation (the paper:
    84 x 84 of 96 x 96); None keeps the whole image."""
    feature_dim: int = 64
    """Size of this camera's feature vector per observation step."""
    num_keypoints: int = 32
    """Keypoint maps of the spatial softmax head (each gives an expected x and y)."""
    learnable_temperature: bool = False
    """Learn the spatial softmax temperature (starts at 1)."""

    def __post_init__(self) -> None:
        if self.crop_size is not None:
            self.crop_size = tuple(int(d) for d in self.crop_size)
            if len(self.crop_size) != 2 or min(self.crop_size) < 1:
                raise ValueError(f"crop_size={self.crop_size}: expected (h, w) with h, w >= 1")
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; use one of {BACKBONES}")
        for name in ("feature_dim", "num_keypoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> CameraConfig:
        return config_from_dict(cls, d)


# ---------------------------------------------------------------------------------- keypoints
class SpatialSoftmax(nn.Module):
    """A 1x1 convolution makes num_kp maps; each becomes a softmax distribution over its pixels
    whose expected image coordinates are that keypoint (Levine et al. 2016, eq. 2-3):

        p_k(i, j) = softmax_ij(a_k(i, j) / temperature),   kp_k = sum_ij p_k(i, j) (x_j, y_i)

    with x running -1 ... 1 over the columns (left to right) and y over the rows (top to
    bottom). Output (N, 2 * num_kp) laid out as x_0, y_0, x_1, y_1, ...
    """

    def __init__(
        self,
        in_channels: int,
        height: int,
        width: int,
        num_kp: int = 32,
        learnable_temperature: bool = False,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_kp, kernel_size=1)
        self.num_kp = num_kp
        ys, xs = torch.meshgrid(
            torch.linspace(-1.0, 1.0, height), torch.linspace(-1.0, 1.0, width), indexing="ij"
        )  # (H, W) each
        # derived from (height, width), so not part of the state dict
        self.register_buffer("pos", torch.stack([xs, ys], dim=-1).flatten(0, 1), persistent=False)
        # (H*W, 2)
        if learnable_temperature:
            self.temperature = nn.Parameter(torch.ones(1))
        else:
            self.temperature = 1.0

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        maps = self.conv(features).flatten(2)  # (N, K, H*W)
        attention = torch.softmax(maps / self.temperature, dim=-1)  # (N, K, H*W)
        keypoints = attention @ self.pos.to(attention.dtype)  # (N, K, 2)
        return keypoints.flatten(1)  # (N, 2K)


# ---------------------------------------------------------------------------------- trunks
def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm in place of BatchNorm, 16 channels per group (the paper's choice)."""
    return nn.GroupNorm(max(1, channels // 16), channels)


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016): two 3x3 convs, identity or 1x1 projection skip."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.norm1 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.norm2 = group_norm(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                group_norm(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class ResNet18GN(nn.Module):
    """ResNet-18 up to its last stage (no average pool, no fc), GroupNorm for BatchNorm.

    conv 7x7/2 -> norm -> relu -> maxpool 3x3/2 -> 4 stages x 2 basic blocks (64, 128, 256,
    512 channels; stages 2-4 halve the resolution): (N, C, H, W) -> (N, 512, ~H/32, ~W/32).
    11,176,512 parameters for C = 3, the same as torchvision's trunk (its norms have as many
    affine parameters as GroupNorm's).
    """

    out_channels = 512

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False),
            group_norm(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages, channels = [], 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(
                nn.Sequential(BasicBlock(channels, width, stride), BasicBlock(width, width))
            )
            channels = width
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class SmallCNN(nn.Module):
    """Four conv -> GroupNorm -> ReLU layers, 1/4 of the input resolution, for CPU training.

    (N, C, H, W) -> (N, 64, ~H/4, ~W/4); at 84 x 84 a 21 x 21 map, fine enough for the
    spatial softmax to place keypoints to about a pixel of the input.
    """

    out_channels = 64

    def __init__(self, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out, kernel, stride in (
            (in_channels, 32, 5, 2),
            (32, 64, 3, 2),
            (64, 64, 3, 1),
            (64, 64, 3, 1),
        ):
            layers += [
                nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2),
                group_norm(c_out),
                nn.ReLU(inplace=True),
            ]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


# ---------------------------------------------------------------------------------- pixels
def center_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The centered (h, w) window of channel-last images (N, H, W, C) -> (N, h, w, C)."""
    h, w = size
    top, left = (images.shape[1] - h) // 2, (images.shape[2] - w) // 2
    return images[:, top : top + h, left : left + w]


def random_crop(
    images: torch.Tensor, size: tuple[int, int], generator: torch.Generator | None = None
) -> torch.Tensor:
    """An (h, w) window at a uniformly drawn offset per image: (N, H, W, C) -> (N, h, w, C).

    One gather on the images' device; offsets come from `generator` (default: torch's RNG).
    """
    return crop_at(images, random_offsets(images.shape[:3], size, generator), size)


def random_offsets(
    shape: tuple[int, int, int], size: tuple[int, int], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Uniform (top, left) offsets of an (h, w) window in N images of (H, W): (N, 2) long,
    on the generator's device (default: torch's RNG, on the CPU)."""
    n, height, width = shape
    dev = generator.device if generator is not None else None
    top = torch.randint(0, height - size[0] + 1, (n,), generator=generator, device=dev)  # (N,)
    left = torch.randint(0, width - size[1] + 1, (n,), generator=generator, device=dev)  # (N,)
    return torch.stack([top, left], dim=1)  # (N, 2)


def crop_at(images: torch.Tensor, offsets: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The (h, w) window at each image's (top, left): (N, H, W, C), (N, 2) -> (N, h, w, C)."""
    n, (h, w), dev = images.shape[0], size, images.device
    top, left = offsets.to(dev).unbind(1)  # (N,) each
    rows = top[:, None] + torch.arange(h, device=dev)  # (N, h)
    cols = left[:, None] + torch.arange(w, device=dev)  # (N, w)
    batch = torch.arange(n, device=dev)[:, None, None]  # (N, 1, 1)
    return images[batch, rows[:, :, None], cols[:, None, :]]  # (N, h, w, C)


def to_float_chw(images: torch.Tensor) -> torch.Tensor:
    """uint8 channel-last (N, H, W, C) -> float32 channel-first (N, C, H, W) in [0, 1]."""
    return einops.rearrange(images, "n h w c -> n c h w").float() / 255.0


# ---------------------------------------------------------------------------------- encoders
class ImageEncoder(nn.Module):
    """One camera: uint8 (N, H, W, C) -> crop (random in train mode, centered in eval mode)
    -> float [0, 1] channel-first -> trunk -> spatial softmax -> Linear -> (N, feature_dim).

    ObsEncoder hands it the B * To frames of a batch at once, so every frame draws its own crop
    offset, as in the reference implementation.
    """

    def __init__(self, image_shape: tuple[int, int, int], cfg: CameraConfig):
        super().__init__()
        height, width, channels = image_shape
        self.image_shape = tuple(image_shape)
        self.crop_size = cfg.crop_size or (height, width)
        if self.crop_size[0] > height or self.crop_size[1] > width:
            raise ValueError(
                f"crop_size {self.crop_size} exceeds the image (H, W) = {(height, width)}"
            )
        trunk_cls = ResNet18GN if cfg.backbone == "resnet18" else SmallCNN
        self.trunk = trunk_cls(channels)
        with torch.no_grad():  # the trunk's output resolution, from one dummy crop
            _, _, fh, fw = self.trunk(torch.zeros(1, channels, *self.crop_size)).shape
        self.keypoints = SpatialSoftmax(
            trunk_cls.out_channels, fh, fw, cfg.num_keypoints, cfg.learnable_temperature
        )
        self.proj = nn.Linear(2 * cfg.num_keypoints, cfg.feature_dim)
        self.feature_dim = cfg.feature_dim

    def crop(self, images: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """Train mode: at the given (top, left) offsets (N, 2), else at random ones; eval
        mode: centered."""
        if tuple(images.shape[1:3]) == self.crop_size:
            return images
        if not self.training:
            return center_crop(images, self.crop_size)
        if offsets is None:
            return random_crop(images, self.crop_size)
        return crop_at(images, offsets, self.crop_size)

    def forward(self, images: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        x = to_float_chw(self.crop(images, offsets))  # (N, C, h, w)
        return self.proj(self.keypoints(self.trunk(x)))  # (N, feature_dim)


Normalize = Callable[[str, torch.Tensor], torch.Tensor]


class ObsEncoder(nn.Module):
    """{key: (B, >= To, ...)} -> global condition (B, To * D), D = sum of per-key sizes.

    Low-dim keys pass through (normalized by the `normalize` the policy hands in, flattened
    per step); each camera key goes through its own ImageEncoder. Per step, the keys are
    concatenated in obs_shapes order, then the To steps are flattened oldest first, so a
    policy without cameras gets exactly the flat vector of its normalized observations.
    """

    def __init__(
        self,
        obs_shapes: Mapping[str, tuple[int, ...]],
        cameras: Mapping[str, CameraConfig],
        n_obs_steps: int,
    ):
        super().__init__()
        missing = sorted(set(cameras) - set(obs_shapes))
        if missing:
            raise ValueError(f"cameras {missing} are not observation keys {list(obs_shapes)}")
        self.obs_shapes = {k: tuple(s) for k, s in obs_shapes.items()}
        self.n_obs_steps = n_obs_steps
        self.cameras = nn.ModuleDict(
            {k: ImageEncoder(self.obs_shapes[k], cfg) for k, cfg in cameras.items()}
        )

    @property
    def feature_dims(self) -> dict[str, int]:
        """Size of each key's features per observation step."""
        return {
            k: self.cameras[k].feature_dim if k in self.cameras else int(torch.Size(s).numel())
            for k, s in self.obs_shapes.items()
        }

    @property
    def output_dim(self) -> int:
        return self.n_obs_steps * sum(self.feature_dims.values())

    def forward(
        self,
        obs: Mapping[str, torch.Tensor],
        normalize: Normalize | None = None,
        device: torch.device | str | None = None,
        crop_offsets: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """obs = {key: (B, >= To, ...)}, oldest first; a longer history is cut to its last To.
        Low-dim values are float (any dtype, converted to float32), images uint8 (H, W, C).
        crop_offsets {camera key: (B, To, 2)} fix the train-mode crops (default: random)."""
        to, parts = self.n_obs_steps, []
        for key in self.obs_shapes:
            x = self.checked(obs, key, device)[:, -to:]  # (B, To, *shape)
            if key in self.cameras:
                b = x.shape[0]
                offsets = (crop_offsets or {}).get(key)  # (B, To, 2) or None
                if offsets is not None:
                    offsets = offsets.flatten(0, 1)  # (B*To, 2)
                f = self.cameras[key](x.flatten(0, 1), offsets)  # (B*To, F)
                parts.append(f.unflatten(0, (b, to)))  # (B, To, F)
            else:
                x = normalize(key, x) if normalize is not None else x
                parts.append(x.flatten(2))  # (B, To, d_key)
        return torch.cat(parts, dim=-1).flatten(1)  # (B, To * D)

    def checked(
        self, obs: Mapping[str, torch.Tensor], key: str, device: torch.device | str | None
    ) -> torch.Tensor:
        """obs[key] as a tensor on `device`, or a ValueError naming the key, what came and
        what was expected."""
        shape, to = self.obs_shapes[key], self.n_obs_steps
        is_camera = key in self.cameras
        expected = f"(B, >= {to}, {', '.join(map(str, shape))})"
        if is_camera:
            expected += " uint8, channel-last as stored"
        if key not in obs:
            kind = "camera key" if is_camera else "key"
            raise ValueError(
                f"observation is missing {kind} {key!r} {expected}; expected {list(self.obs_shapes)}, "
                f"got {list(obs)}"
            )
        if not is_camera:
            x = torch.as_tensor(obs[key], device=device, dtype=torch.float32)
        else:
            x = torch.as_tensor(obs[key], device=device)
        if x.ndim != 2 + len(shape) or tuple(x.shape[2:]) != shape or x.shape[1] < to:
            hint = ""
            if is_camera and x.ndim == 5 and tuple(x.shape[2:]) == (shape[2], shape[0], shape[1]):
                hint = f" (channel-first (C, H, W) given where (H, W, C) = {shape} is expected)"
            raise ValueError(f"obs[{key!r}] has shape {tuple(x.shape)}; expected {expected}{hint}")
        if is_camera and x.dtype != torch.uint8:
            raise ValueError(
                f"obs[{key!r}] has dtype {x.dtype} with shape {tuple(x.shape)}; expected "
                f"torch.uint8 pixels 0-255 with shape {expected} (the encoder scales to [0, 1])"
            )
        return x


__all__ = [
    "CameraConfig",
    "ImageEncoder",
    "ObsEncoder",
    "ResNet18GN",
    "SmallCNN",
    "SpatialSoftmax",
    "center_crop",
    "crop_at",
    "random_crop",
    "random_offsets",
    "to_float_chw",
]
