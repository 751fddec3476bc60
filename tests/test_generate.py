"""generate: the plan (no model), A1111 details, and LoRA fixtures shared by the other generate tests."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from generate.plan import (
    GroupInfo,
    PlanRequest,
    batches,
    group_counts,
    largest_remainder,
    make_groups,
    parse_lora_tags,
    parse_weight,
    plan_fold,
    share,
)
from prompts.dataset import read_dataset
from prompts.errors import UserError
from prompts.normalize import DEFAULT
from prompts.templates import load_templates

os.environ.setdefault("USE_TF", "0")


# ---------------------------------------------------------------- numbers


def test_fractions_follow_the_one_rounding_rule_of_the_core():
    from prompts.layout import count_of_fraction

    for n, f, want in ((110, 0.1, 11), (212, 0.1, 21), (6, 0.25, 2), (6, 0.75, 5), (25, 0.5, 13), (1, 0.5, 1), (7, 2.0, 14)):
        g = GroupInfo("x", None, records=[None] * n)  # only the count matters
        assert group_counts([g], None, [f], False) == {"x": want} == {"x": count_of_fraction(n, f)}, (n, f)


def test_largest_remainder_shares_sum_exactly():
    out = largest_remainder(10, {"a": 1, "b": 1, "c": 1})
    assert sum(out.values()) == 10 and sorted(out.values()) == [3, 3, 4]
    assert largest_remainder(7, {"x": 3, "y": 0}) == {"x": 7, "y": 0}
    assert largest_remainder(0, {"x": 3}) == {"x": 0}


def test_tag_weights_are_finite_numbers():
    assert parse_weight("0.8", "tag") == 0.8
    for bad in ("abc", "nan", "inf", ""):
        with pytest.raises(UserError, match="tag"):
            parse_weight(bad, "tag")


def test_lora_tag_parsing():
    text, tags = parse_lora_tags("<lora:good:0.8> oocgood, brightfield <lora:style>, micrograph")
    assert text == "oocgood, brightfield, micrograph"
    assert tags == [("good", 0.8), ("style", 1.0)]
    assert parse_lora_tags("plain prompt") == ("plain prompt", [])
    assert parse_lora_tags("a <LoRA:x:-0.5>")[1] == [("x", -0.5)]
    with pytest.raises(UserError, match="not a number"):
        parse_lora_tags("<lora:good:heavy>")
    with pytest.raises(UserError, match="not supported"):
        parse_lora_tags("<hypernet:foo:1>")
    with pytest.raises(UserError, match="must read"):
        parse_lora_tags("<lora:a:1:2>")


# ---------------------------------------------------------------- counting


def _groups(demo_data, per="class"):
    return make_groups(read_dataset(demo_data), per, None)


def test_counts_by_fraction_and_balance(demo_data):
    groups = _groups(demo_data)  # acceptable 9, bad 6, good 15
    assert group_counts(groups, None, [0.1, 0.5], False) == {"acceptable": 5, "bad": 3, "good": 8}
    assert group_counts(groups, None, [], True) == {"acceptable": 6, "bad": 9, "good": 0}
    assert group_counts(groups, 4, [0.1], True) == {"acceptable": 6, "bad": 9, "good": 4}
    with pytest.raises(UserError, match="how many"):
        group_counts(groups, None, [], False)


def test_balance_per_cell_line_shares_the_class_deficit(demo_data):
    groups = _groups(demo_data, "cell_line_class")
    counts = group_counts(groups, None, [], True)
    per_class = {}
    for g in groups:
        per_class[g.label] = per_class.get(g.label, 0) + len(g.records) + counts[g.name]
    assert set(per_class.values()) == {15}  # every class topped up to the largest (good: 15)


def _request(lora, **kw):
    kw.setdefault("weights", [1.0, 0.8])
    return PlanRequest(lora=str(lora), **kw)


def _fake_loras(root: Path, groups, folds=None) -> Path:
    for fold in folds or [None]:
        for g in groups:
            d = root / (fold or "") / g
            d.mkdir(parents=True, exist_ok=True)
            (d / "pytorch_lora_weights.safetensors").write_bytes(b"x")
    return root


def test_plan_counts_per_group_and_weight_and_layout(class_data, tmp_path):
    lora = _fake_loras(tmp_path / "lora", ["good", "bad"])
    ds = read_dataset(class_data)
    jobs = plan_fold(_request(lora, count=3, run_seed=5), ds, load_templates(None), None, None, lambda r: True)
    assert len(jobs) == 2 * 3 * 2
    files = {j.file for j in jobs}
    assert "w1.0/good/good_00002.png" in files and "w0.8/bad/bad_00000.png" in files
    # the same index shares its seed across weights (paired images), differs across groups and indices
    seeds = {(j.group, j.index): set() for j in jobs}
    for j in jobs:
        seeds[(j.group, j.index)].add(j.seed)
    assert all(len(s) == 1 for s in seeds.values()) and len({next(iter(s)) for s in seeds.values()}) == 6
    assert all(j.gray and j.prompt.startswith("oocgood") == (j.label == "good") for j in jobs)
    again = plan_fold(_request(lora, count=3, run_seed=5), ds, load_templates(None), None, None, lambda r: True)
    assert again == jobs  # deterministic
    other = plan_fold(_request(lora, count=3, run_seed=6), ds, load_templates(None), None, None, lambda r: True)
    assert [j.seed for j in other] != [j.seed for j in jobs]


def test_plan_per_cell_line_follows_the_lora_folder(demo_data, tmp_path):
    ds = read_dataset(demo_data)
    names = sorted({f"{r.cell_line}__{r.label}" for r in ds.records})
    lora = _fake_loras(tmp_path / "lora", names)
    jobs = plan_fold(_request(lora, fractions=[1.0], weights=[1.0]), ds, load_templates(None), None, None, lambda r: False)
    assert len(jobs) == 30
    j = next(j for j in jobs if j.group == "A549__bad")
    assert j.file.startswith("w1.0/A549/bad/A549__bad_") and "A549" in j.prompt and not j.gray


def test_plan_with_split_counts_training_images_and_uses_fold_loras(demo_data, tmp_path):
    ds = read_dataset(demo_data)
    test = {r.path for r in ds.records[::3]}
    train = {r.path for r in ds.records} - test
    lora = _fake_loras(tmp_path / "lora", ["good", "bad", "acceptable"], folds=["fold_0"])
    jobs = plan_fold(_request(lora, fractions=[1.0], weights=[1.0], init_images="real", strengths=[0.3, 0.6]),
                     ds, load_templates(None), 0, train, lambda r: True)
    assert len(jobs) == len(train)
    assert all(j.file.startswith("fold_0/w1.0/") and "/fold_0/" in j.loras[0].path for j in jobs)
    assert all(j.init_image in train and j.init_image not in test for j in jobs)
    assert {j.strength for j in jobs} == {0.3, 0.6}
    # a LoRA folder without folds would leak: refused
    flat = _fake_loras(tmp_path / "flat", ["good", "bad", "acceptable"])
    with pytest.raises(UserError, match="leak"):
        plan_fold(_request(flat, count=1), ds, load_templates(None), 0, train, lambda r: True)


def test_plan_prompts_tags_and_missing_lora(class_data, tmp_path):
    ds = read_dataset(class_data)
    lora = _fake_loras(tmp_path / "lora", ["good", "bad", "style"])
    jobs = plan_fold(_request(lora, count=2, weights=[1.0], prompt="<lora:{group}:0.7> <lora:style:0.2> {trigger} photo"),
                     ds, load_templates(None), None, None, lambda r: True)
    j = next(j for j in jobs if j.group == "bad")
    assert j.prompt == "oocbad photo"
    assert [(u.name, u.multiplier) for u in j.loras] == [("bad", 0.7), ("style", 0.2)]
    jobs = plan_fold(_request(lora, count=3, weights=[1.0], prompts=["one {class}", "two"], negative_prompt="neg"),
                     ds, load_templates(None), None, None, lambda r: True)
    assert [j.prompt for j in jobs if j.group == "good"] == ["one good", "two", "one good"]  # {class} as in templates
    assert all(j.negative_prompt == "neg" for j in jobs)
    only_good = _fake_loras(tmp_path / "only", ["good"])
    with pytest.raises(UserError, match="no LoRA for 'bad'"):
        plan_fold(_request(only_good, count=1), ds, load_templates(None), None, None, lambda r: True)


def test_batches_share_a_key_and_processes_split_without_overlap(class_data, tmp_path):
    ds = read_dataset(class_data)
    lora = _fake_loras(tmp_path / "lora", ["good", "bad"])
    jobs = plan_fold(_request(lora, count=5), ds, load_templates(None), None, None, lambda r: True)
    bs = batches(jobs, 4)
    assert all(len({j.batch_key for j in b}) == 1 and len(b) <= 4 for b in bs)
    assert sorted(j.file for b in bs for j in b) == sorted(j.file for j in jobs)
    for world in (1, 2, 3, 7):
        parts = [share(bs, r, world) for r in range(world)]
        flat = [j.file for p in parts for b in p for j in b]
        assert sorted(flat) == sorted(j.file for j in jobs) and len(set(flat)) == len(flat)


# ---------------------------------------------------------------- A1111 details


def _k_diffusion_sigmas(alphas_cumprod: np.ndarray, n: int) -> np.ndarray:
    """k-diffusion's DiscreteSchedule.get_sigmas(n) (A1111 'Euler a'): t = linspace(T-1, 0, n), log-sigma interpolated."""
    sigmas = np.sqrt((1 - alphas_cumprod) / alphas_cumprod)
    log_sigmas = np.log(sigmas)
    t = np.linspace(len(sigmas) - 1, 0, n)
    low = np.floor(t).astype(int)
    high = np.ceil(t).astype(int)
    w = t - low
    return np.append(np.exp((1 - w) * log_sigmas[low] + w * log_sigmas[high]), 0.0)


def test_euler_a_noise_levels_match_a1111(tiny_model):
    from diffusion.samplers import canonical_sampler, make_scheduler

    config = json.loads((tiny_model / "scheduler" / "scheduler_config.json").read_text())
    for steps, rtol in ((20, 1.5e-5), (30, 5e-5)):  # diffusers interpolates sigma linearly, k-diffusion in log
        sch = make_scheduler("euler A", config)
        sch.set_timesteps(steps)
        ours = sch.sigmas.double().numpy()
        ref = _k_diffusion_sigmas(sch.alphas_cumprod.double().numpy(), steps)
        assert ours.shape == ref.shape
        assert abs(ours[0] - 14.6146) < 1e-3
        np.testing.assert_allclose(ours[:-1], ref[:-1], rtol=rtol)
        assert ours[-1] == 0
    from diffusers import EulerAncestralDiscreteScheduler

    leading = EulerAncestralDiscreteScheduler.from_config(config, timestep_spacing="leading")
    leading.set_timesteps(20)
    assert abs(float(leading.sigmas[0]) - 14.6146) > 1  # diffusers' default spacing would not match A1111
    assert canonical_sampler("dpm++ 2m karras") == "DPM++ 2M Karras"
    with pytest.raises(UserError, match="unknown sampler"):
        canonical_sampler("Heun++")


# ---------------------------------------------------------------- the command without a model


def test_config_file_flags_override_and_dry_run(demo_data, tmp_path, capsys):
    from generate.__main__ import main

    ds = read_dataset(demo_data)
    lora = _fake_loras(tmp_path / "lora", sorted({f"{r.cell_line}__{r.label}" for r in ds.records}))
    cfg = tmp_path / "study.yaml"
    cfg.write_text(f"data:\n  data: {demo_data}\ngenerate:\n  model: m\n  lora: {lora}\n  output: out\n"
                   "  fraction: [0.5, 1.0]\n  lora_weights: [1.0, 0.8]\n")
    assert main(["--config", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].split() == ["total", "60"] and "-\t1.0\tA549__good\t3" in out  # per cell line, from the LoRA folder
    assert main(["--config", str(cfg), "--dry-run", "--lora-weights", "0.5", "--count", "2", "--per", "cell_line_class"]) == 0
    real = {}
    for r in ds.records:
        real[(r.cell_line, r.label)] = real.get((r.cell_line, r.label), 0) + 1
    expected = sum(max(2, n) for n in real.values())  # the larger of --count and 100 % (the config's fractions)
    assert capsys.readouterr().out.splitlines()[-1].split() == ["total", str(expected)] and expected > 30
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as e:
        main(["--config", str(cfg), "--dry-run", "--fraction", "half"])
    assert e.value.code == 2 and "'half' is not a number" in capsys.readouterr().err


def test_failed_images_are_recognised():
    from generate.provenance import model_name
    from generate.sample import problem

    ok = np.random.default_rng(0).random((8, 8, 3), dtype=np.float32)
    assert problem(ok) is None
    assert problem(np.zeros((8, 8, 3), np.float32)) == "all black"
    nan = ok.copy()
    nan[3, 4, 1] = np.nan
    assert problem(nan) == "NaN"
    assert problem(np.full((8, 8, 3), 0.01, np.float32)) is None  # dark is not black
    assert model_name("/m/v1-5-pruned-emaonly.safetensors") == "v1-5-pruned-emaonly"
    assert model_name("models/stable-diffusion-v1-5") == "stable-diffusion-v1-5"


def test_grayscale_groups_are_recognised(tmp_path):
    from PIL import Image

    from generate.sample import is_gray_group, to_pil
    from prompts.dataset import Record

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (16, 16), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "l.png")
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "gray_as_rgb.png")
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    assert is_gray_group(tmp_path, [Record("l.png", "a"), Record("gray_as_rgb.png", "a")], reading=DEFAULT)
    assert not is_gray_group(tmp_path, [Record("l.png", "a"), Record("rgb.png", "a")], reading=DEFAULT)
    arr = rng.random((4, 4, 3)).astype(np.float32)
    assert to_pil(arr, True).mode == "L" and to_pil(arr, False).mode == "RGB"
