"""Shared fixtures (small data sets made on the fly, the tiny Stable Diffusion, the whole-study runs,
real data paths) and the test tiers.

Tiers (markers registered in pyproject.toml, `--strict-markers`):

- ``unit``: everything not below; `make test-fast` runs only these (`-m unit`).
- ``workflow``: starts Snakemake, or runs a study or a stage end to end for minutes (a fixture that trains
  LoRAs or runs a CV, the ``slow`` ones).
- ``slurm``: needs the one-node SLURM cluster. ``browser``: drives headless Chromium.
- ``gpu``: needs a CUDA device (run on a GPU machine with `-m gpu`).

A test module may declare its tier itself (``pytestmark = pytest.mark.workflow``), and a test
function may too: an explicit tier always wins. Otherwise `pytest_collection_modifyitems` gives
each test one tier from what it uses (its fixtures, then what its body calls), so no test file has
to list them. Each tier has its own timeout (pytest-timeout), unless a test sets one.
"""
from __future__ import annotations

import inspect
import os
import re
import signal
from pathlib import Path

import pytest

os.environ.setdefault("USE_TF", "0")  # transformers must not import TensorFlow in the torch rooms
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _share_the_cores() -> None:
    """One share of the cores per pytest-xdist worker, for every library in this process and every command a test
    starts (prompts.threads reads these variables). With 2 threads in each of 2 workers on 2 cores, OpenMP threads
    spun waiting for a descheduled partner, and a diffusers test took 82 s instead of 3.

    The controller process imports this file first and its workers inherit its environment, so a value this
    function set (recorded in CELLSYNTH_TEST_THREADS) is replaced by the worker's share; one the user set is kept.
    Snakemake jobs get their own `threads:` as in a study."""
    from prompts.threads import THREAD_VARIABLES  # imports nothing else: numpy must read its variable after this

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    share = str(max(1, len(os.sched_getaffinity(0)) // workers))
    if os.environ.get("OMP_NUM_THREADS", share) != os.environ.get("CELLSYNTH_TEST_THREADS", share):
        return  # the user's own setting
    for var in THREAD_VARIABLES:
        os.environ[var] = share
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ["CELLSYNTH_TEST_THREADS"] = share


_share_the_cores()
# A shell that starts pytest in the background (`cmd &`) ignores SIGINT in it and in every child; the Ctrl-C tests
# need Python's own handler back (children started from here then get the default again).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_data(name: str) -> Path:
    """A folder of ../shared/data, or skip the test cleanly when it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} is absent")
    return path


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """5 cell lines x good/acceptable/bad, 30 images at 64x64 (study proportions, at least 5 per class)."""
    from prompts.demo import write_demo_dataset

    return write_demo_dataset(
        tmp_path_factory.mktemp("demo") / "data", per_class={"good": 15, "acceptable": 9, "bad": 6}, size=64
    )


@pytest.fixture(scope="session")
def class_data(tmp_path_factory) -> Path:
    """DATA/<class>/<image>: 2 classes x 6 grayscale 64x64 PNGs."""
    import numpy as np

    from prompts.demo import micrograph

    root = tmp_path_factory.mktemp("classdata") / "data"
    for label in ("good", "bad"):
        (root / label).mkdir(parents=True)
        for i in range(6):
            micrograph(label, "A549", 64, np.random.default_rng(i)).save(root / label / f"{label}_{i}.png")
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny random Stable Diffusion in diffusers layout (needs torch)."""
    pytest.importorskip("torch")
    from diffusion.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny-sd")


@pytest.fixture(scope="session")
def class_loras(tiny_model, tmp_path_factory) -> Path:
    """LORA/good/ and LORA/bad/ for the tiny model (class_data's classes)."""
    root = tmp_path_factory.mktemp("loras") / "lora"
    from .lora_fixtures import make_lora

    for i, label in enumerate(("good", "bad")):
        make_lora(tiny_model, root / label, seed=i + 1)
    return root


@pytest.fixture(scope="session")
def local_run(tmp_path_factory, demo_data, request) -> Path:
    """The small classification study (tests/studies.py) run once per session through Snakemake.

    Tests that only read it share it; a test that changes something restores it, or works on
    `tests.studies.copy_study(local_run, tmp_path / "copy")` (hard links for the large files).
    When this session has a test of `second_run`, that run starts here, in the background (see `second_run`).
    """
    pytest.importorskip("snakemake")
    from .studies import local_study

    folder = local_study(tmp_path_factory, demo_data)
    if any("second_run" in getattr(item, "fixturenames", ()) for item in request.session.items):
        _start_second_run(request, tmp_path_factory, folder)
    return folder


@pytest.fixture(scope="session")
def seg_study(tmp_path_factory) -> Path:
    """The small segmentation study (tests/studies.py) run once per session through Snakemake; the segmentation
    workflow tests and the task promises read it, and a test that changes it restores it or works on a copy."""
    pytest.importorskip("snakemake")
    pytest.importorskip("torch")
    from .studies import segmentation_study

    return segmentation_study(tmp_path_factory.getbasetemp() / "workflow-segmentation")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """munged, slurmctld and slurmd for a one-node cluster (workflow/scripts/local_slurm.py), started once per
    session and stopped (by pid) at its end; skips with the reason where SLURM cannot be installed or started."""
    import importlib.util
    import sys

    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install -e '.[study]')")
    sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
    import local_slurm

    folder = tmp_path_factory.mktemp("slurm")
    try:
        env = local_slurm.start(folder, cpus=2, memory_mb=6000)
    except local_slurm.SlurmUnavailable as err:
        pytest.skip(f"no SLURM here: {err}")
    try:
        yield env
    finally:
        local_slurm.stop(folder)


_SECOND_RUN = pytest.StashKey()


def _start_second_run(request, tmp_path_factory, local: Path) -> None:
    """Start the second run of the small study (once per session) in the background: on the one-node SLURM where it
    starts, else locally."""
    from .studies import start_second

    if _SECOND_RUN in request.config.stash:
        return
    try:
        slurm, reason = request.getfixturevalue("slurm_cluster"), ""
    except pytest.skip.Exception as why:
        slurm, reason = None, str(why)
    started = start_second(tmp_path_factory.getbasetemp() / "workflow-second", local, slurm, reason)
    request.config.stash[_SECOND_RUN] = started
    # a session whose reader of the second run failed or was interrupted first: stop it before the cluster stops
    request.addfinalizer(started.run.stop)


@pytest.fixture(scope="session")
def second_run(tmp_path_factory, local_run, request):
    """The small study once more, in a second folder with Python's hash seed random: on the one-node SLURM
    through the SLURM profile where SLURM can start, else locally as `local_run` ran.

    One run serves two promises: the same study in two folders gives the same files (tests/test_reproducible.py),
    and the study on SLURM gives the local report (tests/test_slurm.py). It starts in the background as soon as
    `local_run` is done, and the tests that read it run last in their group (`pytest_collection_modifyitems`): most
    of a SLURM run is waiting for the plugin's next status check, time the other whole-study tests use.
    Returns `tests.studies.SecondRun`.
    """
    _start_second_run(request, tmp_path_factory, local_run)
    return request.config.stash[_SECOND_RUN].wait()


# --------------------------------------------------------------------------- test tiers

TIERS = ("unit", "workflow", "slurm", "browser", "gpu")
# Seconds per test (setup included, so a session fixture's first user pays for the run it starts).
TIER_TIMEOUTS = {"unit": 180, "workflow": 1500, "slurm": 2400, "browser": 600, "gpu": 1800}
# Fixtures that decide the tier of every test that uses them, most demanding first.
TIER_FIXTURES = (
    ("slurm", {"slurm_cluster"}),
    # whole studies, and the fixtures that run a stage end to end (LoRA training, a CV, every command in
    # turn): minutes each on 2 cores, so not the inner loop
    ("workflow", {"local_run", "second_run", "seg_study", "cv_run", "realism_run", "world", "reference", "killed",
                  "lora_reference", "loras", "small_pbc3", "segmented", "search_study"}),
)
# Modules whose every test runs commands end to end (kills mid-training, resumes).
TIER_MODULES = {"test_promise_kills.py": "workflow"}
# Tests that train, generate or cross-validate end to end without one of those fixtures: the slowest of the
# unit tier as measured with --durations (20-160 s each on a loaded 2-core machine). Keep the list short:
# a test that grows slow belongs here or, better, gets smaller.
END_TO_END_TESTS = {
    "test_classify.py": {"test_augmented_views_are_cached_reproducible_and_distinct", "test_cached_and_naive_paths_give_the_same_metrics", "test_second_phase_unfreezes_top_layers_and_runs", "test_tensorflow_backend_trains_without_importing_torch", "test_torch_backend_builds_and_trains_the_model"},
    "test_generate_cli.py": {"test_killed_run_rerun_ends_complete", "test_loras_from_lora_train_load_with_their_alpha", "test_two_processes_make_each_image_once"},
    "test_generate_run.py": {"test_every_sampler_name_samples", "test_resume_makes_only_what_is_missing"},
    "test_kohya_network.py": {"test_trained_kohya_file_records_the_preset"},
    "test_lora_together_fp16.py": {"test_without_overflow_every_group_steps_and_no_scaler_means_plain_backward"},
    "test_lora_train.py": {"test_bf16_keeps_lora_in_fp32_with_all_options", "test_fold_filter_never_trains_on_a_test_image", "test_outputs_per_group", "test_training_lowers_the_loss_on_a_fixed_batch", "test_two_process_cpu_launch"},
    "test_microscopy.py": {"test_percentile_dataset_levels_come_from_the_folds_training_images"},
    "test_promise_classify.py": {"test_cv_run_records_its_fingerprint_and_says_what_changed"},
    "test_promise_generate.py": {"test_sigterm_is_one_line_naming_the_command_that_resumes_it"},
    "test_promise_lora.py": {"test_changed_inputs_block_a_stale_resume_and_keep_the_checkpoints", "test_ctrl_c_says_what_to_run_and_that_command_continues", "test_plain_rerun_resumes_and_ends_like_an_uninterrupted_run", "test_sigterm_like_ctrl_c_says_what_to_run_and_that_command_continues"},
    "test_protocol.py": {"test_cv_with_another_normalize_into_the_same_output_is_refused_or_recomputed"},
    "test_reproducible_files.py": {"test_lora_files_are_the_same_bytes_across_processes"},
    "test_seg_native.py": {"test_a_baseline_that_did_not_learn_gets_no_verdict", "test_stardist_cv_runs_on_blob_scenes_with_the_floor_beside_it"},
    "test_segment.py": {"test_cv_end_to_end_with_a_synthetic_mix_and_resume", "test_cv_on_pairs_from_per_fold_controlnets", "test_realism_writes_kid_c2st_and_mask_consistency", "test_unet_learns_blob_scenes", "test_unet_trains_on_stained_cells"},
}

# What a test's own body calls, when no fixture decided (most demanding first).
TIER_SOURCES = (
    ("slurm", re.compile(r"local_slurm|slurm_cluster")),
    ("browser", re.compile(r"chromium|webdriver|selenium", re.I)),
    ("workflow", re.compile(r"\bsnakemake\(|SNAKEMAKE|[\"\']snakemake[\"\']|study\.run|local_study\(|_start\(|_run_slot_workflow\(")),
)


def _explicit_tier(item: pytest.Item) -> str | None:
    """The tier a test, its class or its module names itself; two different ones are a usage error.

    `-m unit` selects a test that carries the unit mark anywhere, so a module marked unit with one test marked
    workflow would put that slow test in `make test-fast`: leave the module unmarked instead (unit is the default).
    """
    named = {mark.name for mark in item.iter_markers() if mark.name in TIERS}
    if len(named) > 1:
        raise pytest.UsageError(f"{item.nodeid} is marked with two tiers ({', '.join(sorted(named))}): a test has one; "
                                "leave its module unmarked (unit is the default) and mark the slow test alone")
    return named.pop() if named else None


def _source(item: pytest.Item) -> str:
    try:
        return inspect.getsource(item.function)
    except (AttributeError, OSError, TypeError):
        return ""


def tier_of(item: pytest.Item) -> str:
    """The one tier of a test: explicit mark, else its module, its fixtures, its body, else ``unit``."""
    explicit = _explicit_tier(item)
    if explicit:
        return explicit
    module = getattr(item, "path", Path("")).name
    if module in TIER_MODULES:
        return TIER_MODULES[module]
    if getattr(item, "originalname", item.name) in END_TO_END_TESTS.get(module, ()):
        return "workflow"
    fixtures = set(getattr(item, "fixturenames", ()))
    for tier, names in TIER_FIXTURES:
        if fixtures & names:
            return tier
    source = _source(item)
    for tier, pattern in TIER_SOURCES:
        if pattern.search(source):
            return tier
    if item.get_closest_marker("slow"):
        return "workflow"  # an end-to-end run of minutes: not the inner loop
    return "unit"


# Tiers whose tests share one whole-study run or one cluster: under pytest-xdist (`--dist loadgroup`)
# they go to one worker, so each session fixture runs once while the other workers take the unit tests.
SERIAL_TIERS = {"workflow", "slurm"}


# Fixtures that run a whole study once (per session; the search's per module), and their xdist group: every test
# that reads one goes to one worker, so the study runs once. The SLURM runs (the second run of the small study, the
# search on SLURM) start in the background beside the tests of their group's study: most of a SLURM run is waiting
# for the plugin's next status check (it adds 10 s to the wait after each check that finds no job finished). A test
# that needs only the cluster gets a group of its own, whose worker starts a cluster of its own (private ports).
STUDY_GROUPS = {"local_run": "whole-study", "second_run": "whole-study", "seg_study": "segmentation-study",
                "search_study": "search", "slurm_cluster": "slurm"}
# test_promise_tasks' `finished` param: the task whose finished study is one of those session studies.
FINISHED_GROUPS = {"classification": "whole-study", "segmentation": "segmentation-study"}


def _serial_group(item: pytest.Item) -> str:
    """The xdist group of a workflow or slurm test: its session study's, else its module's (module fixtures
    run once), so two modules of end-to-end tests can run on the two workers at once."""
    fixtures = set(getattr(item, "fixturenames", ()))
    for name, group in STUDY_GROUPS.items():  # in the table's order: a study's group before the cluster's
        if name in fixtures:
            return group
    callspec = getattr(item, "callspec", None)
    finished = callspec.params.get("finished") if callspec is not None else None
    if finished in FINISHED_GROUPS:
        return FINISHED_GROUPS[finished]
    return f"module-{getattr(item, 'path', Path('')).name}"


def _module_fixture_group(item: pytest.Item) -> str | None:
    """The xdist group of a unit test that reads a module- or session-scoped fixture of its own module (a trained
    LoRA, a small CV): its module's, so the fixture is made once, on one worker, and not once per worker."""
    info = getattr(item, "_fixtureinfo", None)
    module = getattr(getattr(item, "module", None), "__name__", None)
    for defs in (info.name2fixturedefs.values() if info is not None else ()):
        fixture = defs[-1]
        if fixture.scope != "function" and getattr(fixture.func, "__module__", None) == module:
            return f"module-{getattr(item, 'path', Path('')).name}"
    return None


def _schedule_rank(item: pytest.Item) -> tuple[int, int]:
    """The order of the tests under `--dist loadgroup --no-loadscope-reorder` (a stable sort, so each group keeps its
    own order), longest first: pytest-xdist then hands out groups in this order as workers free up.

    The session studies' groups first, then the other end-to-end tests, then the unit tests: with pytest-xdist's
    default order (groups with more tests first) a minutes-long test alone in its group started last and ran alone
    at the end. In its group, a test that reads the second run comes last, so that run (started in the background)
    has the other tests' time."""
    group = item.get_closest_marker("xdist_group")
    if group is not None and group.args and group.args[0] in STUDY_GROUPS.values():
        rank = 0
    elif {"workflow", "slurm"} & {mark.name for mark in item.iter_markers()}:
        rank = 1
    else:
        rank = 2
    return (rank, 1 if "second_run" in getattr(item, "fixturenames", ()) else 0)


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    """Give every test exactly one tier marker, that tier's timeout and its xdist group.

    A wrapper, so this runs before every plugin's own hook: `-m` must see the tiers, and pytest-xdist's worker
    hook (which suffixes each grouped test's node id with its group, what `--dist loadgroup` schedules by) must
    see the groups. As a plain `tryfirst` hook it ran after xdist's, so no test was grouped and each worker ran
    the whole-study fixtures again."""
    xdist = config.pluginmanager.hasplugin("xdist")
    for item in items:
        tier = tier_of(item)
        if not _explicit_tier(item):
            item.add_marker(getattr(pytest.mark, tier))
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIER_TIMEOUTS[tier]))
        if xdist and item.get_closest_marker("xdist_group") is None:
            group = _serial_group(item) if tier in SERIAL_TIERS else _module_fixture_group(item)
            if group:
                item.add_marker(pytest.mark.xdist_group(group))
    result = yield
    if getattr(config.option, "loadgroup", False):  # an xdist worker under --dist loadgroup: xdist's hook has now run
        items[:] = sorted(items, key=_schedule_rank)
        lost = [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
        if lost:  # pytest-xdist 3.8 sets item._nodeid, which pytest 9.2 no longer reads
            raise pytest.UsageError(f"pytest-xdist did not group {lost[0]} (pytest {pytest.__version__}): each worker would run "
                                    "the whole studies again; install the pinned pytest (pip install -e '.[dev]')")
    return result
