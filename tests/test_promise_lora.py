"""Promise: `lora train` never loses what the user owns, resumes only what it may, and stops in one line.

Each case failed before the fix (issue 9: 1, 5, 6, 7; issue 10: fingerprints). Tiny model, 32 px, few steps;
the data folder's checksums are compared before and after wherever a run could touch it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import lora  # noqa: E402,F401  (sets USE_TF=0)
from diffusion.formats import read_lora  # noqa: E402
from lora.__main__ import main  # noqa: E402
from prompts import layout  # noqa: E402

from .conftest import ROOT  # noqa: E402
from .helpers import tree_checksums  # noqa: E402

FAST = ["--resolution", "32", "--epochs", "1", "--repeats", "1", "--validation-images", "0", "--classes", "bad"]
# 6 images x 2 repeats x 2 epochs / batch 2 = 12 steps, 6 updates of 2 steps; a checkpoint every 2 updates; the
# options that carry state across updates (schedule, warm-up, accumulation) or draw randomness (crops, noise offset)
RESUMABLE = ["--epochs", "2", "--repeats", "2", "--checkpointing-steps", "2", "--checkpoints-total-limit", "3",
             "--gradient-accumulation-steps", "2", "--lr-scheduler", "cosine", "--lr-warmup-steps", "2", "--random-crop",
             "--min-snr-gamma", "5", "--noise-offset", "0.05"]




def args(model, data, out, *flags) -> list[str]:
    return ["train", "--model", str(model), "--data", str(data), "--output", str(out), *FAST, *map(str, flags)]


def train(*argv) -> int:
    """`python -m lora train` in this process: the exit status."""
    try:
        main(list(argv))
    except SystemExit as exc:
        return exc.code
    return 0


def one_line_error(capsys, *argv) -> str:
    """Run in this process; expect exit status 2 and exactly one `error:` line on stderr."""
    capsys.readouterr()
    assert train(*argv) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line[:2].isdigit()]  # drop log lines
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def subprocess_train(*argv, signal_at: str | None = None):
    """`python -m lora ...` in a subprocess; signal_at "N" SIGKILLs it after checkpoint N, "N:INT" sends Ctrl-C."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if signal_at:
        env["LORA_KILL_AFTER_UPDATE"] = signal_at
    return subprocess.run([sys.executable, "-m", "lora", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def same_lora(a: Path, b: Path) -> bool:
    la, lb = read_lora(a), read_lora(b)
    return la.modules.keys() == lb.modules.keys() and all(
        torch.equal(la.modules[k].down, lb.modules[k].down) and torch.equal(la.modules[k].up, lb.modules[k].up) for k in la.modules)


@pytest.fixture
def data(class_data, tmp_path) -> Path:
    """A private copy of the 2-class data, free to change."""
    return Path(shutil.copytree(class_data, tmp_path / "data"))


@pytest.fixture(scope="module")
def reference(tiny_model, class_data, tmp_path_factory) -> Path:
    """The uninterrupted run of RESUMABLE, to compare resumed runs with."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert train(*args(tiny_model, class_data, out, *RESUMABLE)) == 0
    return out / "bad"


@pytest.fixture(scope="module")
def killed(tiny_model, class_data, tmp_path_factory) -> Path:
    """The output folder of RESUMABLE killed (SIGKILL) right after its checkpoint at update 4."""
    out = tmp_path_factory.mktemp("killed") / "out"
    proc = subprocess_train(*args(tiny_model, class_data, out, *RESUMABLE), signal_at="4")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (out / "bad").exists()  # no half group
    assert sorted(p.name for p in (out / ".work" / "bad" / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    return out


def copy_of(killed: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the killed run's output folder, and its checkpoints folder."""
    out = Path(shutil.copytree(killed, tmp_path / "out"))
    return out, out / ".work" / "bad" / "checkpoints"


# --------------------------------------------------------------------------- 9.1: nothing of the user's is lost

def test_output_equal_to_or_inside_data_is_refused(capsys, tiny_model, data):
    before = tree_checksums(data)
    for out in (data, data / "bad", data / "runs"):
        msg = one_line_error(capsys, *args(tiny_model, data, out))
        assert "inside the data folder" in msg
    assert tree_checksums(data) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_existing_group_folder_not_written_by_us_is_left_untouched(capsys, tiny_model, class_data, tmp_path, overwrite):
    out = tmp_path / "out"
    (out / "bad").mkdir(parents=True)
    (out / "bad" / "my_image.png").write_bytes(b"the user's only copy")
    before = tree_checksums(tmp_path)
    msg = one_line_error(capsys, *args(tiny_model, class_data, out, *(["--overwrite"] if overwrite else [])))
    assert str(out / "bad") in msg and "not a LoRA folder written by `lora train`" in msg
    assert tree_checksums(tmp_path) == before


def test_overwrite_replaces_only_our_own_finished_folder(capsys, tiny_model, class_data, tmp_path):
    out = tmp_path / "out"
    assert train(*args(tiny_model, class_data, out)) == 0
    note = out / "bad" / "notes.txt"
    note.write_text("the user's notes")  # a file we did not write, inside our folder
    before = tree_checksums(tmp_path)
    msg = one_line_error(capsys, *args(tiny_model, class_data, out, "--seed", "1", "--overwrite"))
    assert "notes.txt" in msg and "did not write" in msg
    assert tree_checksums(tmp_path) == before
    note.unlink()
    first = (out / "bad" / layout.LORA_DIFFUSERS_FILE).read_bytes()
    assert train(*args(tiny_model, class_data, out, "--seed", "1", "--overwrite")) == 0
    assert (out / "bad" / layout.LORA_DIFFUSERS_FILE).read_bytes() != first
    assert sorted(p.name for p in out.iterdir()) == ["bad"]  # no aside or temporary folders left


# --------------------------------------------------------------------------- 9.5: a diverging run stops

def test_nan_loss_stops_with_one_line_and_no_lora(capsys, tiny_model, data, tmp_path):
    out = tmp_path / "out"
    before = tree_checksums(data)
    msg = one_line_error(capsys, *args(tiny_model, data, out, "--unet-lr", "1e30"))
    assert "bad" in msg and "update" in msg and "learning rate" in msg and "--unet-lr 1e+30" in msg
    assert not (out / "bad").exists()
    assert tree_checksums(data) == before


# --------------------------------------------------------------------------- 9.6 and 10.2: resume only what is the same

def test_plain_rerun_resumes_and_ends_like_an_uninterrupted_run(tiny_model, class_data, tmp_path, reference, killed, caplog):
    out, _ = copy_of(killed, tmp_path)
    with caplog.at_level("INFO", logger="lora"):
        assert train(*args(tiny_model, class_data, out, *RESUMABLE)) == 0  # no --resume
    assert "continuing from" in caplog.text and "checkpoint-4" in caplog.text
    assert same_lora(reference, out / "bad")
    assert (reference / "loss.csv").read_text() == (out / "bad" / "loss.csv").read_text()
    assert not (out / ".work").exists()  # a finished group's checkpoints go
    recorded = json.loads((out / "bad" / layout.FINGERPRINT_FILE).read_text())
    assert recorded == json.loads((reference / layout.FINGERPRINT_FILE).read_text())


def test_sigterm_like_ctrl_c_says_what_to_run_and_that_command_continues(tiny_model, class_data, tmp_path, reference):
    """SIGTERM is what SLURM sends at a time limit: one line naming what resumes, exit 143, and it does."""
    out = tmp_path / "out"
    argv = args(tiny_model, class_data, out, *RESUMABLE)
    proc = subprocess_train(*argv, signal_at="2:TERM")
    assert proc.returncode == 143, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("terminated (SIGTERM): bad stopped; run the same command again to continue it from its checkpoint")
    assert train(*argv) == 0
    assert same_lora(reference, out / "bad")


def test_ctrl_c_says_what_to_run_and_that_command_continues(tiny_model, class_data, tmp_path, reference):
    out = tmp_path / "out"
    argv = args(tiny_model, class_data, out, *RESUMABLE)
    proc = subprocess_train(*argv, signal_at="2:INT")
    assert proc.returncode == 130, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted: bad stopped; run the same command again to continue it from its checkpoint")
    assert last.endswith(str(out / ".work" / "bad" / "checkpoints" / "checkpoint-2"))
    assert train(*argv) == 0  # exactly what the message says
    assert same_lora(reference, out / "bad")
    assert (reference / "loss.csv").read_text() == (out / "bad" / "loss.csv").read_text()


def test_changed_inputs_block_a_stale_resume_and_keep_the_checkpoints(capsys, tiny_model, data, tmp_path):
    from prompts.dataset import read_dataset
    from prompts.templates import DEFAULT_TEMPLATES

    paths = [r.path for r in read_dataset(data).records]
    folds = [{"repeat": 0, "fold": 0, "train": paths[1:], "test": paths[:1]}]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"version": 1, "data": str(data), "n_splits": 2, "repeats": 1, "seed": 0, "group_by": None,
                                 "classes": ["bad", "good"], "folds": folds}))
    templates = tmp_path / "templates.yaml"  # the user's copy of the default, edited to this data's classes
    templates.write_text("\n".join(line for line in DEFAULT_TEMPLATES.read_text().splitlines() if not line.startswith("  acceptable:")))
    out = tmp_path / "out"
    inputs = ["--split", split, "--fold", "0", "--templates", templates]
    proc = subprocess_train(*args(tiny_model, data, out, *RESUMABLE, *inputs), signal_at="4")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    work = out / ".work"
    assert sorted(p.name for p in (work / "fold_0" / "bad" / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    kept = tree_checksums(work)

    def refused(*flags) -> str:
        msg = one_line_error(capsys, *args(tiny_model, data, out, *RESUMABLE, *inputs, *flags))
        assert msg.startswith("error: checkpoint") and "--overwrite" in msg
        assert tree_checksums(work) == kept  # no checkpoint dropped
        assert not (out / "fold_0" / "bad").exists()
        return msg

    assert "settings (rank: 8 -> 4)" in refused("--rank", "4")
    split_text = split.read_text()
    folds[0] = {"repeat": 0, "fold": 0, "train": paths[:-1], "test": paths[-1:]}  # another test image
    split.write_text(json.dumps({**json.loads(split_text), "folds": folds}))
    assert "split" in refused()
    split.write_text(split_text)
    templates_text = templates.read_text()
    templates.write_text(templates_text.replace("prompt:", "# edited\nprompt:", 1))
    msg = refused()
    assert "templates" in msg and "captions" not in msg  # the file changed, the prompts did not
    templates.write_text(templates_text)
    image = data / "bad" / "bad_3.png"  # in fold 0's training part
    original = image.read_bytes()
    from PIL import Image

    Image.open(image).rotate(90).save(image)
    assert "images" in refused()
    image.write_bytes(original)
    # back to the same inputs: the plain re-run continues; with --overwrite (or --resume auto, the workflow's way, when
    # the inputs changed) the group starts over, dropping its own checkpoints
    assert train(*args(tiny_model, data, out, *RESUMABLE, *inputs, "--rank", "4", "--resume", "auto")) == 0
    assert not (work / "fold_0" / "bad" / "checkpoints" / "checkpoint-4").exists()
    assert train(*args(tiny_model, data, out, *RESUMABLE, *inputs, "--rank", "4", "--overwrite")) == 0
    assert not work.exists()
    recorded = json.loads((out / "fold_0" / "bad" / layout.FINGERPRINT_FILE).read_text())
    assert sorted(recorded["images"]) == [p for p in paths[1:] if p.startswith("bad/")]
    assert recorded["images"]["bad/bad_3.png"] == hashlib.sha256(original).hexdigest()
    assert list(recorded["triggers"]) == ["bad"] and recorded["triggers"]["bad"]


def test_finished_lora_with_equal_fingerprint_is_kept(capsys, tiny_model, class_data, tmp_path, caplog):
    out = tmp_path / "out"
    assert train(*args(tiny_model, class_data, out)) == 0
    before = tree_checksums(out)
    with caplog.at_level("INFO", logger="lora"):
        assert train(*args(tiny_model, class_data, out)) == 0  # the same command: nothing to do
    assert "finished already from the same inputs" in caplog.text
    assert tree_checksums(out) == before
    msg = one_line_error(capsys, *args(tiny_model, class_data, out, "--unet-lr", "1e-3"))
    assert "settings (unet_lr: 0.0005 -> 0.001)" in msg and "--overwrite" in msg


# --------------------------------------------------------------------------- 9.7: damaged checkpoints, foreign state, full disk

def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tiny_model, class_data, tmp_path, reference, killed, caplog):
    out, ckpts = copy_of(killed, tmp_path)
    weights = ckpts / "checkpoint-4" / "lora_0.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated, as by a crash
    with caplog.at_level("INFO", logger="lora"):
        assert train(*args(tiny_model, class_data, out, *RESUMABLE, "--resume", "latest")) == 0  # the same as no flag
    assert "checkpoint-4 cannot be loaded" in caplog.text and "falling back to checkpoint-2" in caplog.text
    assert same_lora(reference, out / "bad")


def test_foreign_checkpoint_under_resume_path_is_one_line(capsys, tiny_model, class_data, tmp_path, killed):
    out, ckpts = copy_of(killed, tmp_path)
    foreign = tmp_path / "foreign"
    shutil.copytree(ckpts / "checkpoint-2", foreign)
    torch.save({"state": {}, "param_groups": [{"lr": 1.0, "params": [0]}]}, foreign / "optimizer.bin")  # another run's
    msg = one_line_error(capsys, *args(tiny_model, class_data, out, *RESUMABLE, "--resume", foreign))
    assert str(foreign) in msg and "cannot load" in msg
    (foreign / "train_state.json").unlink()
    msg = one_line_error(capsys, *args(tiny_model, class_data, out, *RESUMABLE, "--resume", foreign))
    assert "not a complete checkpoint" in msg
    assert not (out / "bad").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs (smaller than one LoRA and its kohya copy) (needs mount rights: root in a container; skipped elsewhere)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_full_disk_is_one_line_and_leaves_no_half_folder(capsys, tiny_model, class_data, small_disk):
    out = small_disk / "out"
    for flags in ([], RESUMABLE):  # the final write, and a checkpoint
        msg = one_line_error(capsys, *args(tiny_model, class_data, out, *flags))
        assert "the disk is full" in msg
        left = [str(p.relative_to(small_disk)) for p in small_disk.rglob("*") if p.is_file()]
        assert not [p for p in left if ".tmp" in p or ".partial" in p or p.startswith("out/bad/")], left


def test_read_only_output_is_one_line_before_training(capsys, tiny_model, class_data, tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        msg = one_line_error(capsys, *args(tiny_model, class_data, mnt / "out"))
        assert str(mnt / "out") in msg and "write" in msg
        assert not list(mnt.iterdir())
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
