# Realism and the cross-validation with its report.


rule realism:
    """KID and the real-vs-synthetic classifier test per class and LoRA weight."""
    input:
        synthetic=P.all_synthetic_dirs(),
        manifest=str(P.synthetic_root / "manifest.jsonl"),
        images=P.images,
        weights=WEIGHTS_INPUT,
    output:
        report(directory(P.realism_dir), patterns=["{name}.md"], category="Realism",
               caption="report/realism.rst"),
    params:
        settings=P.digests["realism"],
    log:
        LOGS / "realism.log",
    threads: 4
    resources:
        gpu=1,
    shell:
        ENV + GPU + "{PY} -m classify realism --config {STUDY} --synthetic {SYNTHETIC_ROOT} {WEIGHTS_FLAG} "
        "--output {output} --no-progress" + LOGGED


rule cv:
    """Cross-validation over every training mix, and the report."""
    input:
        synthetic=P.all_synthetic_dirs(),
        manifest=str(P.synthetic_root / "manifest.jsonl"),
        realism=P.realism_dir,
        images=P.images,
        split=SPLIT,
        weights=WEIGHTS_INPUT,
    output:
        report(directory(P.report_dir), htmlindex="report.html", category="Cross-validation",
               caption="report/cv.rst"),
    params:
        settings=P.digests["cv"],
    log:
        LOGS / "cv.log",
    threads: 4
    resources:
        gpu=1,
    shell:
        ENV + GPU + "{PY} -m classify cv --config {STUDY} --split {input.split} --synthetic {SYNTHETIC_ROOT} "
        "--realism {input.realism} {WEIGHTS_FLAG} --output {output} --no-progress" + LOGGED
