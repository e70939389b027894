rule fetch_weights:
    # A localrule: compute nodes often have no internet. A file the user placed at the output path is used as
    # is (Snakemake sees it exists); offline, the error names the file and where to put it.
    output:
        f"{RES}/weights/{{preset}}/{{filename}}",
    params:
        url=weights_url_arg,
        visfeat=VISFEAT,
    log:
        "logs/fetch_weights/{preset}/{filename}.log",
    localrule: True
    retries: 2
    conda:
        "../../envs/cpu.yaml"
    shell:
        "{params.visfeat} fetch-weights --preset {wildcards.preset} {params.url} --dest {output} > {log} 2>&1 || (tail -n 3 {log} >&2; exit 1)"
