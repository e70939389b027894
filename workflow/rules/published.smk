rule download_published:
    # a published feature file (config `published`): resumable, sha256-checked where published, unpacked when an
    # archive; a localrule, so compute nodes without internet never try
    output:
        directory(f"{RES}/published/{{published}}"),
    params:
        args=lambda wc: ARGS.download_published(wc.published),
    log:
        "logs/download_published/{published}.log",
    localrule: True
    retries: 2
    conda:
        "../../envs/cpu.yaml"
    shell:
        visfeat("prepare --source archive {params.args} --dest {output}")


rule import_published:
    # the store of a dataset x extractor whose features entry says `source: published`: imported, streamed, with
    # the source URL and sha256 in its attributes (instead of extract + merge)
    input:
        get_published_download,
    output:
        f"{R}/{{pair}}.h5",
    wildcard_constraints:
        pair=_alternatives(ARGS.published_pairs),
    params:
        args=lambda wc: ARGS.import_published(wc.pair),
    log:
        "logs/import_published/{pair}.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        visfeat("import {params.args} {input} {output}")


ruleorder: import_published > merge
