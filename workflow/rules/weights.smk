rule fetch_weights:
    # A localrule: compute nodes often have no internet. A file the user placed at the output path is used as
    # is (Snakemake sees it exists); offline, the error names the file and where to put it.
    output:
        f"{RES}/weights/{{preset}}/{{filename}}",
    wildcard_constraints:
        preset=r"[^/]+",  # a hub-named preset's file is {model}/{tag}/{file} below it (extractors/hub.py)
    params:
        url=lambda wc: ARGS.weights_url(wc.preset, wc.filename),
    log:
        "logs/fetch_weights/{preset}/{filename}.log",
    localrule: True
    retries: 2
    conda:
        "../../envs/cpu.yaml"
    shell:
        visfeat("fetch-weights --preset {wildcards.preset} {params.url} --dest {output}")
