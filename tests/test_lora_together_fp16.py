"""fp16 in `lora.together`: one loss scaler per group, so an overflow in one group's samples skips that group's update
and halves that group's scale only, while the other groups step with the gradients of their separate runs.

fp16 training needs a GPU (`lora train` refuses it on a CPU), so the scaler logic is checked here on the CPU with the
real parts of a joint step: the tiny U-Net with K = 3 peft adapters routed per slice of the batch (`Router`), the
trainer's AdamW, real `torch.amp.GradScaler` objects, and the joint backward and update functions the loop calls. An
overflow is forced by a forward hook that sets one group's activations to inf.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

# unit tier by default (tests/conftest.py); its slowest test is on END_TO_END_TESTS there

K, PER_GROUP = 3, 2
SETTINGS = SimpleNamespace(seed=0, rank=4, alpha=2.0, unet_lr=1e-3, text_encoder_lr=0.0, network="attention", conv_dim=0,
                           conv_alpha=None, optimizer="adamw", weight_decay=1e-2, max_grad_norm=1.0, mixed_precision="fp16")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def joint(tiny_model):
    """The tiny U-Net (frozen) with K adapters, each adapter's parameter groups, and the router."""
    from diffusers import UNet2DConditionModel

    from lora.together import Router, add_adapters, lora_layers

    unet = UNet2DConditionModel.from_pretrained(tiny_model / "unet")
    unet.requires_grad_(False)
    groups = add_adapters(unet, None, SETTINGS, K)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B away from zero, so both factors get gradients
        for layer in lora_layers(unet):
            for p in layer.lora_B.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    router = Router([unet])
    yield unet, groups, router
    router.remove()


def batch():
    """K groups' samples one after another: latents [K*2, 4, 8, 8], timesteps [K*2], text states [K*2, 77, 32], target."""
    g = torch.Generator().manual_seed(1)
    n = K * PER_GROUP
    return (torch.randn(n, 4, 8, 8, generator=g), torch.randint(0, 1000, (n,), generator=g), torch.randn(n, 77, 32, generator=g),
            torch.randn(n, 4, 8, 8, generator=g))


def group_losses(unet, router, order: list[str], rows: slice) -> torch.Tensor:
    """Each group's mean loss [len(order)] over the samples `rows` of the batch, routed per slice."""
    x, t, hidden, target = (v[rows] for v in batch())
    router.order = order
    try:
        pred = unet(x, t, hidden).sample
    finally:
        router.order = []
    losses = torch.nn.functional.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
    return losses.view(len(order), -1).mean(dim=1)


def params_of(groups, k: int) -> list[torch.Tensor]:
    return [p for grp in groups[k] for p in grp["params"]]


def snapshot(groups) -> list[list[torch.Tensor]]:
    return [[p.detach().clone() for p in params_of(groups, k)] for k in range(K)]


def restore(groups, saved) -> None:
    with torch.no_grad():
        for k in range(K):
            for p, v in zip(params_of(groups, k), saved[k]):
                p.copy_(v)
                p.grad = None


def optimizers(groups):
    from lora.steps import make_optimizer

    return [make_optimizer(groups[k], SETTINGS, CPU) for k in range(K)]


def overflow_in_group(unet, k: int):
    """A forward hook on the U-Net's first convolution that sets group k's activations to inf (an fp16 overflow)."""
    def hook(module, args, output):
        output = output.clone()
        output[k * PER_GROUP:(k + 1) * PER_GROUP] = float("inf")
        return output

    return unet.conv_in.register_forward_hook(hook)


def test_an_overflow_in_one_group_skips_only_that_groups_update(joint):
    from lora.together import adapter_name, backward_groups, group_scaler, step_optimizer

    unet, groups, router = joint
    start = snapshot(groups)
    scalers = [group_scaler(SETTINGS, CPU) for _ in range(K)]
    assert all(isinstance(s, torch.amp.GradScaler) for s in scalers)
    opts = optimizers(groups)
    handle = overflow_in_group(unet, 1)
    try:
        losses = group_losses(unet, router, [adapter_name(k) for k in range(K)], slice(None))
    finally:
        handle.remove()
    assert torch.isfinite(losses[0]) and torch.isfinite(losses[2]) and not torch.isfinite(losses[1])
    backward_groups(losses, scalers, 1, accelerator=None)
    joint_grads = {k: [p.grad.clone() for p in params_of(groups, k)] for k in (0, 2)}
    for k in range(K):
        step_optimizer(opts[k], params_of(groups, k), SETTINGS.max_grad_norm, scalers[k])
    unscaled = {k: [p.grad.clone() for p in params_of(groups, k)] for k in (0, 2)}  # unscaled and clipped by step_optimizer

    # group 1: its update skipped (its factors as they were), its scale halved
    assert all(torch.equal(p, v) for p, v in zip(params_of(groups, 1), start[1]))
    assert scalers[1].get_scale() == 2.0**15
    # groups 0 and 2: finite gradients, stepped, their scales kept
    for k in (0, 2):
        assert all(torch.isfinite(g).all() for g in joint_grads[k])
        assert scalers[k].get_scale() == 2.0**16
        assert any(not torch.equal(p, v) for p, v in zip(params_of(groups, k), start[k]))
        assert all(torch.isfinite(p).all() for p in params_of(groups, k))

    # each stepped group's gradients are those of its separate fp16 run: its own samples, its own scaler
    after = snapshot(groups)
    restore(groups, start)
    separate_opts = optimizers(groups)
    for k in (0, 2):
        scaler = group_scaler(SETTINGS, CPU)
        loss = group_losses(unet, router, [adapter_name(k)], slice(k * PER_GROUP, (k + 1) * PER_GROUP))[0]
        scaler.scale(loss).backward()  # what accelerator.backward does with an fp16 scaler
        for mine, joint_grad in zip(params_of(groups, k), joint_grads[k]):
            torch.testing.assert_close(mine.grad, joint_grad, atol=1e-3, rtol=1e-4)  # scaled by 65536
        step_optimizer(separate_opts[k], params_of(groups, k), SETTINGS.max_grad_norm, scaler)
        for mine, joint_grad in zip(params_of(groups, k), unscaled[k]):
            torch.testing.assert_close(mine.grad, joint_grad, atol=1e-8, rtol=1e-4)
        assert scaler.get_scale() == 2.0**16
        for mine, joint_p in zip(params_of(groups, k), after[k]):
            torch.testing.assert_close(mine, joint_p, atol=5e-5, rtol=1e-3)  # test_lora_together's tolerance
    restore(groups, start)


def test_without_overflow_every_group_steps_and_no_scaler_means_plain_backward(joint):
    from accelerate import Accelerator

    from lora.together import adapter_name, backward_groups, group_scaler, step_optimizer

    unet, groups, router = joint
    start = snapshot(groups)
    assert group_scaler(SimpleNamespace(mixed_precision="bf16"), CPU) is None
    assert group_scaler(SimpleNamespace(mixed_precision="no"), CPU) is None
    assert group_scaler(SETTINGS, CPU, Accelerator(cpu=True)) is None  # an accelerator without a scaler: no scaling, as its separate run
    scaled, plain = {}, {}
    for use_scaler in (True, False):
        restore(groups, start)
        scalers = [group_scaler(SETTINGS, CPU) if use_scaler else None for _ in range(K)]
        losses = group_losses(unet, router, [adapter_name(k) for k in range(K)], slice(None))
        backward_groups(losses, scalers, 2, accelerator=Accelerator(cpu=True))
        opts = optimizers(groups)
        for k in range(K):
            step_optimizer(opts[k], params_of(groups, k), SETTINGS.max_grad_norm, scalers[k])
        (scaled if use_scaler else plain).update({k: [p.detach().clone() for p in params_of(groups, k)] for k in range(K)})
        if use_scaler:
            assert [s.get_scale() for s in scalers] == [2.0**16] * K
    for k in range(K):  # loss scaling changes nothing when nothing overflows
        assert any(not torch.equal(p, v) for p, v in zip(scaled[k], start[k]))
        for a, b in zip(scaled[k], plain[k]):
            torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-3)
    restore(groups, start)


def test_a_groups_scale_is_saved_in_its_checkpoint_and_read_back(joint, tmp_path):
    from lora.together import SCALER_FILE, GroupRun, load_group_state, save_group_state

    unet, groups, _ = joint
    opts = optimizers(groups)

    def run(scaler):
        return GroupRun(job=None, adapter="g1", images=None, latents_cache=None, caption_row=[], token_ids=None, text_states=None,
                        param_groups=groups[1], optimizer=opts[1], lr_scheduler=None, epoch_steps=1, total_steps=1,
                        total_updates=1, cache_seconds=0.0, scaler=scaler)

    halved = torch.amp.GradScaler("cpu", init_scale=2.0**15)
    save_group_state([unet], run(halved), str(tmp_path / "ckpt"))
    assert (tmp_path / "ckpt" / SCALER_FILE).is_file()
    fresh = torch.amp.GradScaler("cpu")
    load_group_state([unet], run(fresh), str(tmp_path / "ckpt"), CPU)
    assert fresh.get_scale() == 2.0**15


def test_fp16_together_is_planned_and_several_processes_are_refused_with_the_way_out():
    from lora.plan import _check_combinations
    from lora.together import check_together
    from prompts.errors import UserError

    settings = SimpleNamespace(cache_latents=False, random_crop=False, together="all", mixed_precision="fp16", optimizer="adamw",
                               overwrite=False)
    _check_combinations(settings, None)  # no longer refused
    with pytest.raises(UserError) as err:
        check_together(settings, SimpleNamespace(num_processes=2))
    message = str(err.value)
    assert "\n" not in message and "one process" in message and "lora.together: 1" in message and "2 processes" in message
