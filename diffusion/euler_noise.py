"""Euler a with every step's noise drawn up front: the same numbers as diffusers, one copy to the device.

diffusers' `EulerAncestralDiscreteScheduler.step` draws the step's noise with
`randn_tensor(..., generator=generator)`. With one CPU generator per image (how
generate seeds images, so a seed gives the same image on any device) that is one
CPU `torch.randn` per image per step, then a blocking copy from pageable memory to
the GPU: 30 steps x 16 images = 480 small draws and 30 synchronising copies per batch.

`PredrawnEulerAncestral` draws, at the first step of a sampling run, the noise of
every remaining step from the same generators, in the order diffusers draws it
(each generator's draws follow each other step by step, one tensor of the image's
shape per step), so a generator hands out exactly the numbers it would have handed
out step by step. The noise is built in pinned memory and moved to the device once,
without blocking; each step then reads its slice. The arithmetic of a step is
diffusers' own, operation for operation, so the images are bit-identical to those of
the stock scheduler (tests/test_euler_noise.py).

Whatever the pipeline drew from the generators before the first step (the starting
latents; img2img's VAE sample and start noise) is left as it is: the draw happens
lazily at the first step, when the generators are in the state diffusers would see.

Why a loop of per-step draws and not one `randn((steps, ...))` per generator: torch's
CPU normal sampler fills tensors in blocks of 16 values and redraws the last block
of a tensor whose size is not a multiple of 16, so one large draw equals successive
small ones only when the image's latent size is a multiple of 16. The loop is exact
for every size and costs the same random numbers.
"""
from __future__ import annotations

import torch
from diffusers import EulerAncestralDiscreteScheduler
from diffusers.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteSchedulerOutput


def generator_rows(generator, batch: int) -> list[tuple[torch.Generator, int]] | None:
    """How diffusers' `randn_tensor` splits a batch between generators: [(generator, rows)], or None.

    A list of B generators gives each image one row; a single generator (or a list of one) draws all
    B rows at once. None when the noise cannot be pre-drawn exactly: no generator (unseeded), a device
    generator (its draw is already on the device), a list whose length is not the batch, or a
    generator object listed twice (its draws would interleave between images).
    """
    if isinstance(generator, (list, tuple)) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, torch.Generator):
        return [(generator, batch)] if generator.device.type == "cpu" else None
    if not isinstance(generator, (list, tuple)) or len(generator) != batch:
        return None
    if len({id(g) for g in generator}) != batch or any(
            not isinstance(g, torch.Generator) or g.device.type != "cpu" for g in generator):
        return None
    return [(g, 1) for g in generator]


def predraw_noise(rows: list[tuple[torch.Generator, int]], steps: int, shape: tuple[int, ...],
                  dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every step's noise for a batch, drawn on the CPU as diffusers draws it: (steps, B, C, h, w) on `device`.

    Parameters
    ----------
    rows : list of (torch.Generator, int)
        Each CPU generator and how many consecutive images of the batch it draws for (`generator_rows`).
    steps : int
        Number of scheduler steps still to run.
    shape : tuple of int
        One image's noise shape (C, h, w), in latent pixels.
    dtype, device : torch.dtype, torch.device
        The model output's dtype (diffusers draws in it) and the device the steps run on.

    Returns
    -------
    torch.Tensor
        (steps, B, C, h, w) standard normal noise; on CUDA copied once from pinned memory without blocking.
    """
    per_generator = [torch.stack([torch.randn((n, *shape), generator=g, dtype=dtype) for _ in range(steps)])
                     for g, n in rows]  # each: (steps, n, C, h, w), the generator's draws in step order
    noise = torch.cat(per_generator, dim=1)
    if device.type == "cuda":
        return noise.pin_memory().to(device, non_blocking=True)
    return noise.to(device)


class PredrawnEulerAncestral(EulerAncestralDiscreteScheduler):
    """diffusers' Euler ancestral scheduler whose per-step noise is drawn once per sampling run.

    Drop-in: same config, same `from_config`, same outputs bit for bit. Falls back to the stock step when
    the generators cannot be pre-drawn exactly (`generator_rows` returns None).
    """

    _predrawn: torch.Tensor | None = None
    _predrawn_key: tuple | None = None

    def set_timesteps(self, *args, **kwargs):
        """diffusers' `set_timesteps`; also forgets the noise of the previous run."""
        self._predrawn, self._predrawn_key = None, None
        return super().set_timesteps(*args, **kwargs)

    def _step_noise(self, rows, model_output: torch.Tensor) -> torch.Tensor:
        """This step's noise (B, C, h, w): drawn for all remaining steps at the run's first step, then served."""
        key = (tuple(id(g) for g, _ in rows), tuple(model_output.shape), model_output.dtype, model_output.device)
        if self._predrawn is None or self._predrawn_key[0] != key:
            start = self.step_index
            self._predrawn = predraw_noise(rows, len(self.timesteps) - start, tuple(model_output.shape[1:]),
                                           model_output.dtype, model_output.device)
            self._predrawn_key = (key, start)
        return self._predrawn[self.step_index - self._predrawn_key[1]]

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None, return_dict: bool = True):
        """One Euler ancestral step, as diffusers 0.39 computes it, with pre-drawn noise.

        Shapes: model_output and sample (B, C, h, w); returns the previous sample in model_output's dtype.
        """
        rows = generator_rows(generator, model_output.shape[0])
        if (rows is None or isinstance(timestep, (int, torch.IntTensor, torch.LongTensor))
                or self.config.prediction_type not in ("epsilon", "v_prediction")):
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
        if not self.is_scale_input_called:  # diffusers warns here; keep its behaviour
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
        if self.step_index is None:
            self._init_step_index(timestep)
        noise = self._step_noise(rows, model_output)

        # From here on diffusers' arithmetic, operation for operation, so the result is bit-identical.
        sigma = self.sigmas[self.step_index]
        sample = sample.to(torch.float32)
        if self.config.prediction_type == "epsilon":
            pred_original_sample = sample - sigma * model_output
        else:  # v_prediction
            pred_original_sample = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
        sigma_from = self.sigmas[self.step_index]
        sigma_to = self.sigmas[self.step_index + 1]
        sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        derivative = (sample - pred_original_sample) / sigma
        dt = sigma_down - sigma
        prev_sample = sample + derivative * dt
        prev_sample = prev_sample + noise * sigma_up
        prev_sample = prev_sample.to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev_sample, pred_original_sample)
        return EulerAncestralDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
