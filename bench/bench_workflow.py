"""The whole study through the workflow: `--cores 2` side by side with the same jobs one at a time.

    python -m bench.bench_workflow [--images 90] [--folds 5] [--out bench/workflow.md]

Both runs start from nothing (their own output folder, Snakemake records and feature cache):

- parallel:   `snakemake --cores 2` with the workflow's threads (1 per LoRA and generation job,
  so two of them run side by side);
- one at a time: the same jobs with every rule's threads set to 2 (`--set-threads`), so that
  Snakemake can run only one job at once and each job has the whole machine.

From the DAG of the one-at-a-time run (job start and end times from `.snakemake/metadata`):
the sum of all job times over the critical path, i.e. the speed-up bound with as many GPUs or
cores as jobs; the same bound for the organ-on-chip study's job counts (per-rule median job
times of this run put into that study's DAG shape); and, given per-job GPU figures
(`--gpu-times rule=seconds,...`), the expected wall time of the published study on 1, 4 and 8
GPUs by list scheduling. Without GPU figures those are stated as not measured.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "workflow" / "Snakefile"
RULES = ("tiny_model", "calibrate_weights", "split", "lora", "generate", "realism", "cv")
# The organ-on-chip study (examples/organ_on_chip/): 3 classes, LoRA weights 1.0 and 0.8;
# original protocol 5 folds x 1 repeat, leakage-free variant 5 folds x 3 repeats.
OOC = {"published (5 folds)": 5, "leakage-free (5 folds x 3 repeats)": 15}
OOC_CLASSES, OOC_WEIGHTS = 3, 2

STUDY = """\
study: {{output: out}}
data: {{data: data}}
lora: {{model: tiny, per: class, repeats: 2, epochs: 2, batch_size: 2, resolution: 64, rank: 4, alpha: 4.0,
       validation_images: 1, checkpointing_steps: 10}}
generate: {{steps: 20, size: [64, 64], batch_size: 8, lora_weights: [1.0, 0.8], fraction: [0.1, 0.25, 0.5, 0.75, 1.0],
           balance: true, seed: 0}}
classify: {{folds: {folds}, group_by: "regex:^\\\\d{{8}}", backbone: EfficientNetB0, weights: calibrated, image_size: 64,
           epochs: 60, augment: false, mixes: [real, real+10, real+25, real+50, real+75, real+100, synthetic, balance]}}
"""


# --------------------------------------------------------------------------- DAG from Snakemake's records

def read_jobs(workdir: Path) -> list[dict]:
    """One record per job: rule, outputs, inputs, start and end (s), from `.snakemake/metadata`."""
    import base64

    jobs: dict[tuple, dict] = {}
    for f in (workdir / ".snakemake" / "metadata").iterdir():
        rec = json.loads(f.read_text())
        output = base64.urlsafe_b64decode(f.name).decode()
        key = (rec["rule"], rec["starttime"], rec["endtime"])
        job = jobs.setdefault(key, {"rule": rec["rule"], "start": rec["starttime"], "end": rec["endtime"],
                                    "inputs": set(rec.get("input", [])), "outputs": set()})
        job["outputs"].add(output)
    return sorted(jobs.values(), key=lambda j: j["start"])


def dependencies(jobs: list[dict]) -> list[set[int]]:
    """deps[i]: indices of the jobs whose outputs job i reads."""
    producer = {o: i for i, j in enumerate(jobs) for o in j["outputs"]}
    return [{producer[x] for x in j["inputs"] if x in producer and producer[x] != i} for i, j in enumerate(jobs)]


def critical_path(durations: list[float], deps: list[set[int]]) -> float:
    """Length (s) of the longest chain of dependent jobs (jobs listed in an order where deps come first)."""
    finish: list[float] = []
    for i, d in enumerate(durations):
        finish.append(d + max((finish[k] for k in deps[i]), default=0.0))
    return max(finish, default=0.0)


def study_dag(n_folds: int, seconds: dict[str, float], classes: int = OOC_CLASSES, weights: int = OOC_WEIGHTS):
    """(durations, deps) of the workflow's DAG for a study of n_folds folds (split, LoRAs, images, realism, cv)."""
    durations, deps = [seconds["split"]], [set()]
    loras: dict[int, list[int]] = {}
    for k in range(n_folds):
        for _ in range(classes):
            loras.setdefault(k, []).append(len(durations))
            durations.append(seconds["lora"])
            deps.append({0})
    gens = []
    for k in range(n_folds):
        for _ in range(weights):
            gens.append(len(durations))
            durations.append(seconds["generate"])
            deps.append(set(loras[k]))
    durations.append(seconds["realism"])
    deps.append(set(gens))
    durations.append(seconds["cv"])
    deps.append(set(gens) | {len(durations) - 2, 0})
    return durations, deps


def list_schedule(durations: list[float], deps: list[set[int]], slots: int) -> float:
    """Wall time (s) of running the DAG on `slots` GPUs, longest ready job first (no preemption)."""
    import heapq

    n = len(durations)
    waiting = [set(d) for d in deps]
    users = [[] for _ in range(n)]
    for i, d in enumerate(deps):
        for k in d:
            users[k].append(i)
    ready = [(-durations[i], i) for i in range(n) if not waiting[i]]
    heapq.heapify(ready)
    running: list[tuple[float, int]] = []
    now, free = 0.0, slots
    while ready or running:
        while ready and free:
            _, i = heapq.heappop(ready)
            heapq.heappush(running, (now + durations[i], i))
            free -= 1
        now, i = heapq.heappop(running)
        free += 1
        for u in users[i]:
            waiting[u].discard(i)
            if not waiting[u]:
                heapq.heappush(ready, (-durations[u], u))
    return now


# --------------------------------------------------------------------------- the two runs

def run_study(folder: Path, data: Path, folds: int, extra: list[str]) -> float:
    """Run the study in `folder` from nothing; returns its wall time (s)."""
    folder.mkdir(parents=True)
    (folder / "data").symlink_to(data, target_is_directory=True)
    (folder / "study.yaml").write_text(STUDY.format(folds=folds))
    env = dict(os.environ, XDG_CACHE_HOME=str(folder / "cache"), HF_HUB_OFFLINE="1")
    cmd = [str(Path(sys.executable).parent / "snakemake"), "-s", str(SNAKEFILE), "--configfile", "study.yaml",
           "--cores", "2", "--quiet", *extra]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"error: the study failed in {folder}:\n{res.stderr[-3000:]}")
    return wall


def per_rule(jobs: list[dict]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for j in jobs:
        out.setdefault(j["rule"], []).append(j["end"] - j["start"])
    return out


def smoke(work: Path, images: int) -> None:
    """--smoke: the study this benchmark runs, planned by Snakemake (`-n`, no job run), and the published study's
    schedule estimate from made-up job times: every piece the benchmark calls, in seconds, nothing written."""
    from prompts.demo import class_counts, write_demo_dataset

    folder = work / "smoke"
    folder.mkdir(parents=True)
    write_demo_dataset(folder / "data", per_class=class_counts(images), size=64)
    (folder / "study.yaml").write_text(STUDY.format(folds=2))
    env = dict(os.environ, XDG_CACHE_HOME=str(folder / "cache"), HF_HUB_OFFLINE="1")
    cmd = [str(Path(sys.executable).parent / "snakemake"), "-s", str(SNAKEFILE), "--configfile", "study.yaml", "--cores", "1", "-n"]
    res = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"error: the study does not plan in {folder}:\n{res.stderr[-3000:]}")
    durations, deps = study_dag(5, {r: 1.0 for r in RULES})
    print(f"smoke: the study plans; published DAG {len(durations)} jobs, critical path {critical_path(durations, deps):.0f} s, "
          f"1 GPU {list_schedule(durations, deps, 1):.0f} s at 1 s per job")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_workflow", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=90, help="demo images (make demo: 90)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "workflow.md")
    p.add_argument("--gpu-times", help="per-job GPU seconds of the published study, e.g. lora=1200,generate=450,realism=900,cv=1800,split=5")
    p.add_argument("--smoke", action="store_true", help="plan the study (snakemake -n) and schedule the published DAG; run no job")
    args = p.parse_args(argv)
    import tempfile

    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="bench-workflow-smoke-") as tmp:
            smoke(Path(tmp), 30)
        return

    from prompts.demo import class_counts, write_demo_dataset

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-workflow-"))
    data = write_demo_dataset(work / "data", per_class=class_counts(args.images), size=128)
    load0 = os.getloadavg()
    one = ["--set-threads", *(f"{r}=2" for r in RULES)]
    wall_par = run_study(work / "parallel", data, args.folds, [])
    wall_seq = run_study(work / "one_at_a_time", data, args.folds, one)
    load1 = os.getloadavg()

    jobs = read_jobs(work / "one_at_a_time")
    deps = dependencies(jobs)
    durations = [j["end"] - j["start"] for j in jobs]
    total, crit = sum(durations), critical_path(durations, deps)
    rules = per_rule(jobs)
    med = {r: statistics.median(v) for r, v in rules.items()}
    med_par = {r: statistics.median(v) for r, v in per_rule(read_jobs(work / "parallel")).items()}
    lines = [
        "# Workflow benchmark", "",
        f"`python -m bench.bench_workflow --images {args.images} --folds {args.folds}` on {os.cpu_count()} CPU cores, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average before {load0[0]:.1f}, after {load1[0]:.1f}.",
        "", "The demo study (tiny Stable Diffusion, calibrated EfficientNet-B0 at 64 px, "
        f"{args.images} demo images, {args.folds} folds, {len(jobs)} jobs), each run from nothing:", "",
        "| run | wall time | ratio |", "| --- | --- | --- |",
        f"| one job at a time (every job 2 threads) | {wall_seq:.0f} s | 1.00 |",
        f"| `--cores 2` (LoRA and generation jobs 1 thread each, side by side) | {wall_par:.0f} s | {wall_seq / wall_par:.2f}x faster |",
        "", "Job times (s): one at a time (every job 2 threads), and the median in the `--cores 2` run:", "",
        "| job | count | median | sum | median, `--cores 2` |", "| --- | --- | --- | --- | --- |",
    ]
    for r in RULES:
        if r in rules:
            lines.append(f"| `{r}` | {len(rules[r])} | {med[r]:.1f} | {sum(rules[r]):.0f} | {med_par.get(r, float('nan')):.1f} |")
    lines += ["", "Speed-up bound with unlimited GPUs/cores (sum of all job times / critical path):", "",
              "| DAG | jobs | sum of job times | critical path | bound |", "| --- | --- | --- | --- | --- |",
              f"| this demo run | {len(jobs)} | {total:.0f} s | {crit:.0f} s | {total / crit:.1f}x |"]
    for name, n_folds in OOC.items():
        d, dp = study_dag(n_folds, med)
        s, c = sum(d), critical_path(d, dp)
        lines.append(f"| organ-on-chip {name}, demo job times | {len(d)} | {s:.0f} s | {c:.0f} s | {s / c:.1f}x |")
    lines += ["", "Expected wall time of the published study (5 folds, 15 LoRAs, 10 generation jobs) on 1, 4 and 8 GPUs:", ""]
    if args.gpu_times:
        secs = {k: float(v) for k, v in (kv.split("=") for kv in args.gpu_times.split(","))}
        d, dp = study_dag(5, secs)
        lines += ["| GPUs | wall time |", "| --- | --- |"]
        lines += [f"| {k} | {list_schedule(d, dp, k) / 3600:.2f} h |" for k in (1, 4, 8)]
        lines.append(f"\nFrom per-job GPU seconds {secs}.")
    else:
        lines.append("not measured: no GPU was lent to the run that wrote this file. With per-job GPU figures, "
                     "`--gpu-times lora=S,generate=S,realism=S,cv=S,split=S` computes them (list scheduling on the DAG).")
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
