rule export_embeddings:
    # clip-retrieval's layout of a store's global vectors (img_emb/ + metadata/ parts, float16, L2-normalised),
    # what embedding-reader, autofaiss and clip-retrieval's back end read; streamed, memory one chunk of vectors.
    # A dataset of tars on local disk also gives its manifest: each image's caption and url, read from its tar
    input:
        unpack(get_export_input),
    output:
        directory(f"{R}/exports/{{dataset}}/{{extractor}}"),
    params:
        args=lambda wc, input: ARGS.export_embeddings(input.manifest),
    log:
        "logs/export_embeddings/{dataset}/{extractor}.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        visfeat("export --format embedding-reader {params.args} {input.store} {output}")


rule export_text_embeddings:
    # the same layout of a text store (text_emb/ + metadata/ with each caption)
    input:
        f"{R}/text/{{name}}/{{extractor}}.h5",
    output:
        directory(f"{R}/exports/text/{{name}}/{{extractor}}"),
    wildcard_constraints:
        name=_alternatives(config["text"]),
    log:
        "logs/export_text_embeddings/{name}/{extractor}.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        visfeat("export --format embedding-reader {input} {output}")


rule exports:
    # `snakemake exports`: every configured global field and text store in clip-retrieval's layout
    input:
        get_exports(),
