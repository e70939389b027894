# visfeat: image features for vision-and-language research. Thin on purpose: rules live in workflow/rules/.
from snakemake.utils import min_version

min_version("9.19")


report: "workflow/report/workflow.rst"


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/merge.smk"
include: "workflow/rules/published.smk"
include: "workflow/rules/text.smk"
include: "workflow/rules/kmeans.smk"
include: "workflow/rules/report.smk"


rule all_features:
    input:
        get_all_features(),
    default_target: True


rule weights:
    # every weights file the configured extractors need, fetched on this machine (cluster login nodes)
    input:
        get_all_weights(),


for _dataset in DATASETS:

    rule:
        # features_<dataset>: everything all_features builds for one dataset
        name:
            f"features_{_dataset}"
        input:
            features_of(_dataset),


onsuccess:
    # What this run wrote, so its end says more than "N of N steps done": each feature store a finished job made
    # (a shard only when it was itself a target), with its image count and failed ids (visfeat/store/summary.py).
    # Stores are opened only here, after the run: parsing the workflow stays free of h5py.
    import os

    from visfeat.store.summary import read_summary

    _dag = workflow.dag
    _written = sorted(
        {
            f
            for job in _dag.finished_jobs
            if job.rule.name in ("merge", "import_published", "kmeans_assign")
            or (job.rule.name == "extract" and job in _dag.targetjobs)
            for f in job.output
            if f.endswith(".h5") and os.path.exists(f)
        }
    )
    try:
        _lines = [read_summary(f).line() for f in _written]
    except ImportError:  # Snakemake's own env lacks h5py (only the rules' conda envs have it): the paths alone
        _lines = [f"{f} (visfeat inspect {f})" for f in _written]
    if _lines:
        print("visfeat: this run wrote\n" + "\n".join(f"  {line}" for line in _lines))
