"""Training images: dataset records -> pixel tensors at the training resolution.

Policy (the README documents it):
1. decode with `prompts.images.load_image` (EXIF orientation applied; 16-bit scaled
   linearly to 8-bit; grayscale stays mode L, colour becomes RGB);
2. resize so that the *shorter* side equals the resolution (aspect kept; Lanczos
   down, bicubic up);
3. crop a square of resolution x resolution: the centre, or (random_crop) a random
   position drawn per sample;
4. grayscale is replicated to 3 identical channels, so it stays visually gray;
5. optional random horizontal and vertical flips (p = 0.5 each; micrographs have no "up");
6. pixels scaled from 0..255 to -1..1 (what the SD VAE expects).

Randomness comes from an explicit `torch.Generator` per step (see `train.step_generator`),
never from global state, so a resumed run sees the very same crops and flips.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from prompts.dataset import Dataset
from prompts.images import load_image, resize_shortest_side


@dataclass
class ImageSet:
    """Images of one LoRA group, each resized to shortest side = resolution, as uint8 [3, H, W] tensors."""

    paths: list[str]
    images: list[torch.Tensor]
    resolution: int

    def __len__(self) -> int:
        return len(self.images)


def load_images(dataset: Dataset, resolution: int, reading) -> ImageSet:
    """Decode and resize every record of `dataset` once (kept in memory, uint8, about 3*res^2*4/3 bytes each), read
    under `reading` (the job's `prompts.normalize.Reading`: the data section's rule, with fitted levels)."""
    paths, images = [], []
    for record in dataset.records:
        img = resize_shortest_side(load_image(dataset.abspath(record), reading), resolution)
        arr = np.asarray(img)
        if arr.ndim == 2:  # grayscale: replicate L into 3 identical channels
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        images.append(torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).contiguous())
        paths.append(record.path)
    return ImageSet(paths, images, resolution)


def crop(image: torch.Tensor, size: int, random_crop: bool, generator: torch.Generator | None) -> torch.Tensor:
    """Square crop [3, size, size] of a uint8 [3, H, W] image: centre, or random with `generator`."""
    _, h, w = image.shape
    if random_crop:
        top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
    else:
        top, left = (h - size) // 2, (w - size) // 2
    return image[:, top:top + size, left:left + size]


def to_model_range(image: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 -1..1 (same shape)."""
    return image.float().div(127.5).sub(1.0)


def flip_flags(n: int, generator: torch.Generator) -> torch.Tensor:
    """[n, 2] booleans: (horizontal, vertical) flip per sample, each with p = 0.5."""
    return torch.rand(n, 2, generator=generator) < 0.5


def apply_flips(x: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """Flip each sample of x [B, C, H, W] by its row of flags [B, 2] (works on pixels and latents, on any device)."""
    flags = flags.to(x.device)
    x = torch.where(flags[:, 0].view(-1, 1, 1, 1), x.flip(-1), x)  # horizontal
    return torch.where(flags[:, 1].view(-1, 1, 1, 1), x.flip(-2), x)  # vertical


def crop_batch(images: ImageSet, indices: list[int], random_crop: bool, generator: torch.Generator | None) -> torch.Tensor:
    """uint8 pixels [B, 3, res, res] of the images at `indices` (crops drawn in order from `generator`)."""
    return torch.stack([crop(images.images[i], images.resolution, random_crop, generator) for i in indices])


def pixel_batch(images: ImageSet, indices: list[int], random_crop: bool, generator: torch.Generator) -> torch.Tensor:
    """Pixels [B, 3, res, res] in -1..1 for the images at `indices` (flips are applied by the caller)."""
    return to_model_range(crop_batch(images, indices, random_crop, generator))


def epoch_order(n: int, repeats: int, epoch: int, seed: int) -> list[int]:
    """The image indices of one epoch: every image `repeats` times, shuffled by (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    items = torch.arange(n).repeat(repeats)
    return items[torch.randperm(len(items), generator=g)].tolist()


def epoch_batches(order: list[int], batch_size: int, num_processes: int, process_index: int) -> list[list[int]]:
    """This process's batches of one epoch.

    The order is padded by wrapping around to a multiple of batch_size * num_processes
    (as torch's DistributedSampler does), so every process gets the same number of
    full batches; global batch k is order[k*B*P:(k+1)*B*P], process p takes its p-th slice.
    """
    per_step = batch_size * num_processes
    steps = -(-len(order) // per_step)
    padded = (order * (steps * per_step // max(len(order), 1) + 1))[: steps * per_step]
    return [padded[k * per_step + process_index * batch_size: k * per_step + (process_index + 1) * batch_size] for k in range(steps)]


def steps_per_epoch(n_images: int, repeats: int, batch_size: int, num_processes: int) -> int:
    """Forward/backward steps per epoch on each process."""
    return -(-(n_images * repeats) // (batch_size * num_processes))
