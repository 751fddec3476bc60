# The phenotyping study (`study.task: phenotyping`): its own jobs only (common.smk has the publishing of the
# report). Every job is `python -m phenotype cv` on OUT/study.yaml:
# the baseline regime alone (it fills the feature cache) -> every other regime alone (reading that cache)
# -> every regime together, compared: the report, written into OUT/.stage/ and published whole.
# P is a study.phenotyping.PhenoPlan: regimes, each regime's own flags and readable params (`P.params(rule)`);
# every path comes from its StudyLayout (L). Rule names differ from the other tasks' so the SLURM profile
# sizes each.
# With the regime `synthetic` (regimes <scarce regime>+P), per fold first: `phenotype crops` (the fold's training
# cells as PNG crops per type) -> `lora train` on that crop folder (one LoRA per type) -> `generate` per LoRA
# weight; every +P regime's job and the report read those trees and trace each crop their LoRAs saw to a
# training image of its fold. These three call the same commands as classification's lora and generate rules,
# with the crop folder as the data folder (those rules read the study's image data and split; here each fold
# has its own data folder, and `--split ''` keeps a data.split of the study away from them).
# With phenotype.segmentation unet or stardist, per fold first (pheno_segment): `phenotype pairs` (the fold's
# training image-mask pairs and test images) -> `segment predict` (the segmentation task's model trained on those
# pairs only, predicting the fold's test images); every phenotype cv job reads those masks (--segmented).

import re

PHENO_CACHE = quote(P.feature_cache)
BASELINE_SEAL = P.regime_seal(P.baseline)


wildcard_constraints:
    regime="|".join(re.escape(r) for r in P.regimes),
    weight=r"w[^/]+",


rule pheno_regime:
    """One regime alone (`phenotype cv --regimes ...`): its one-regime report, results and overlays.

    The baseline's job cuts every cell and computes every cell's features into the study's feature cache
    (inside its own folder); every other regime's job waits for it and only fits classifiers on those features.
    """
    input:
        data=P.data_files,
        cache=lambda wc: [] if wc.regime == P.baseline else [BASELINE_SEAL],
        synthetic=lambda wc: P.synthetic_inputs(wc.regime),
        segmented=P.segmented_seals(),
    output:
        **sealed(L.regime_pattern()),
    params:
        **P.params("regime"),
        flags=lambda wc: P.regime_flags(wc.regime),
    log:
        L.log("pheno_regime", "{regime}"),
    threads: 2
    shell:
        ENV + "{PY} -m phenotype cv --config {STUDY} {params.flags} --output {output.folder:q} --no-progress" + LOGGED
        + " && " + SEAL + "{output.folder:q}"


rule pheno_cv:
    """Every regime together in the same folds, on the cached features: the compared report (opens with the answer)."""
    input:
        data=P.data_files,
        regimes=[P.regime_seal(r) for r in P.regimes],
        segmented=P.segmented_seals(),
    output:
        directory(L.staged(L.report_dir)),
    params:
        **P.params("report"),
        synthetic=P.synthetic_flags + P.segmented_flags,
    log:
        L.log("pheno_cv"),
    threads: 2
    shell:
        ENV + "{PY} -m phenotype cv --config {STUDY} --cache-dir {PHENO_CACHE}{params.synthetic} --output {output:q} "
        "--no-progress" + LOGGED


if P.segmenter:

    rule pheno_segment:
        """Fold {fold}'s test co-culture images segmented by the segmentation task's model (segment.*, model from
        phenotype.segmentation) trained on the fold's training image-mask pairs only."""
        input:
            data=P.data_files,
        output:
            **sealed(L.segmented_pattern()),
        params:
            **P.params("segment"),
            model=P.segmenter,
        log:
            L.log("pheno_segment", FOLD),
        threads: 2
        resources:
            gpu=1,
        shell:
            ENV + "{PY} -m phenotype pairs --config {STUDY} --fold {wildcards.fold} --out {output.folder:q}/pairs > {log:q} 2>&1"
            " && " + GPU + "{PY} -m segment predict --config {STUDY} --model {params.model} --train {output.folder:q}/pairs/train.csv "
            "--images {output.folder:q}/pairs/test.csv --out {output.folder:q}/masks --no-progress >> {log:q} 2>&1"
            " || {{ status=$?; tail -n 20 {log:q} >&2; exit $status; }}"
            " && " + SEAL + "{output.folder:q}"


if P.synthetic:

    rule pheno_crops:
        """Fold {fold}'s training cells (monoculture cells, annotated cells of its co-culture training images) as PNG crops per type."""
        input:
            data=P.data_files,
        output:
            **sealed(L.crops_pattern()),
        params:
            **P.params("crops"),
        log:
            L.log("pheno_crops", FOLD),
        threads: 1
        shell:
            ENV + "{PY} -m phenotype crops --config {STUDY} --fold {wildcards.fold} --out {output.folder:q}" + LOGGED
            + " && " + SEAL + "{output.folder:q}"

    rule pheno_lora:
        """One LoRA per cell type on fold {fold}'s crops only (the crop folder is the LoRA's data folder)."""
        input:
            crops=str(layout.seal_file(Path(L.crops_pattern()))),
            model=MODEL_INPUT,
        output:
            **sealed(L.lora_fold_pattern()),
        params:
            **P.params("lora"),
            model=quote(P.lora_model),
            crops=lambda wc: quote(L.crops_dir(wc.fold)),
        log:
            L.log("pheno_lora", FOLD),
        threads: 1
        resources:
            gpu=1,
        shell:
            ENV + GPU + "{PY} -m lora train --config {STUDY} --model {params.model} --data {params.crops} --split '' "
            "--output {output.folder:q}" + LOGGED + " && " + SEAL + "{output.folder:q}"

    rule pheno_generate:
        """Generated crops of fold {fold} at one LoRA weight, per type, from that fold's LoRAs."""
        input:
            lora=str(layout.seal_file(Path(L.lora_fold_pattern()))),
            crops=str(layout.seal_file(Path(L.crops_pattern()))),
            model=MODEL_INPUT,
        output:
            **sealed(L.synthetic_pattern()),
        params:
            **P.params("generate"),
            model=quote(P.generate_model),
            weight=lambda wc: P.weight_of(wc.weight),
            crops=lambda wc: quote(L.crops_dir(wc.fold)),
            lora=lambda wc: quote(L.lora_fold_dir(wc.fold)),
            stage=lambda wc: quote(L.generate_staging(wc.fold, wc.weight)),
            size=f"{P.generate_size} {P.generate_size}",
            fraction=P.generate_fraction,
        log:
            L.log("pheno_generate", FOLD, "{weight}"),
        threads: 1
        resources:
            gpu=1,
        shell:
            ENV + GPU + "{PY} -m generate --config {STUDY} --model {params.model} --lora {params.lora} --data {params.crops} --split '' "
            "--lora-weights {params.weight} --fraction {params.fraction} --size {params.size} --output {params.stage} "
            "--no-progress" + LOGGED + "; mv {params.stage}/{wildcards.weight} {output.folder:q} && rm -r {params.stage} && "
            + SEAL + "{output.folder:q}"
