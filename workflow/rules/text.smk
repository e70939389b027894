rule text_embeddings:
    # CLIP text embeddings of captions, a store of their own keyed by caption id (with its image id). The captions
    # are a file, or a webdataset/urls dataset's manifest (its samples' txt members).
    input:
        captions=get_captions,
        weights=get_weights,
    output:
        f"{R}/text/{{name}}/{{extractor}}.h5",
    params:
        preset=lambda wc: EXTRACTORS[wc.extractor]["preset"],
        options=lambda wc: ARGS.text(wc.extractor),
    log:
        "logs/text_embeddings/{name}/{extractor}.log",
    resources:
        gpu=1,
    conda:
        get_extract_env
    shell:
        visfeat("text --preset {params.preset} {params.options} --weights {input.weights} --captions {input.captions} "
                "--out {output}")
