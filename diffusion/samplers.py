"""AUTOMATIC1111 sampler names -> diffusers schedulers with the same noise levels.

"Euler a" is k-diffusion's Euler ancestral on the model's discrete noise levels
taken at evenly spaced timesteps from T-1 down to 0: diffusers'
`EulerAncestralDiscreteScheduler` with `timestep_spacing="linspace"` (start sigma
14.6 for SD 1.x; the "leading" default would start at 11.0). "DPM++ 2M Karras"
is DPM-Solver++ (2M) on Karras sigmas; "DDIM" is DDIM on SD's own "leading"
timesteps with steps_offset 1, as A1111's compvis DDIM.
"""
from __future__ import annotations

from prompts.errors import UserError

SAMPLERS: dict[str, tuple[str, dict]] = {
    "Euler a": ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "linspace"}),
    "Euler": ("EulerDiscreteScheduler", {"timestep_spacing": "linspace"}),
    "DDIM": ("DDIMScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                 "timestep_spacing": "linspace", "use_karras_sigmas": False}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                        "use_karras_sigmas": True}),
}
_ALIASES = {"euler_a": "Euler a", "k_euler_a": "Euler a", "euler_ancestral": "Euler a", "k_euler": "Euler",
            "ddim": "DDIM", "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_karras": "DPM++ 2M Karras"}


def canonical_sampler(name: str) -> str:
    """The A1111 spelling of a sampler name (case and spacing forgiven); UserError for unknown names."""
    key = " ".join(str(name).split()).lower()
    for known in SAMPLERS:
        if key == known.lower():
            return known
    alias = _ALIASES.get(key.replace(" ", "_").replace("+", "p"))
    if alias:
        return alias
    raise UserError(f"--sampler {name!r}: unknown sampler; choose one of {', '.join(repr(s) for s in SAMPLERS)}")


def make_scheduler(name: str, base_config: dict, predraw_noise: bool = True):
    """A scheduler for sampler `name`, with the base model's training noise schedule (betas) kept.

    Parameters
    ----------
    name : str
        A sampler name (`canonical_sampler` spellings).
    base_config : dict
        The base model's scheduler config.
    predraw_noise : bool
        Euler a only: draw each run's per-step noise up front (`diffusion.euler_noise`); same images.
    """
    import diffusers

    cls_name, overrides = SAMPLERS[canonical_sampler(name)]
    cls = getattr(diffusers, cls_name)
    if predraw_noise and cls_name == "EulerAncestralDiscreteScheduler":
        from .euler_noise import PredrawnEulerAncestral as cls
    return cls.from_config(base_config, **overrides)
