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
include: "workflow/rules/export.smk"


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
    print_run_summary(workflow.dag)
