rule download_published:
    # a published feature file (config `published`): resumable, sha256-checked where published, unpacked when an
    # archive; a localrule, so compute nodes without internet never try
    output:
        directory(f"{RES}/published/{{published}}"),
    params:
        args=download_published_args,
        visfeat=VISFEAT,
    log:
        "logs/download_published/{published}.log",
    localrule: True
    retries: 2
    conda:
        "../../envs/cpu.yaml"
    shell:
        "{params.visfeat} prepare --source archive {params.args} --dest {output} > {log} 2>&1 "
        "|| (tail -n 3 {log} >&2; exit 1)"


rule import_published:
    # the store of a dataset x extractor whose features entry says `source: published`: imported, streamed, with
    # the source URL and sha256 in its attributes (instead of extract + merge)
    input:
        get_published_download,
    output:
        f"{R}/{{pair}}.h5",
    wildcard_constraints:
        pair=_alternatives(PUBLISHED_PAIRS),
    params:
        args=import_args,
        visfeat=VISFEAT,
    log:
        "logs/import_published/{pair}.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        "{params.visfeat} import {params.args} {input} {output} > {log} 2>&1"


ruleorder: import_published > merge
