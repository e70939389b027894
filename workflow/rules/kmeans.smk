rule kmeans_train:
    # faiss k-means on a bounded, seeded sample of the training datasets' vectors (memory ~ the sample, not the
    # datasets); faiss-gpu when it sees a GPU (the SLURM profile sends it to the GPU partition)
    input:
        get_kmeans_train_stores,
    output:
        centroids=f"{R}/kmeans/{{kmeans}}/centroids.h5",
        npy=f"{R}/kmeans/{{kmeans}}/centroids.npy",
    params:
        args=lambda wc: ARGS.kmeans_train(wc.kmeans),
    log:
        "logs/kmeans_train/{kmeans}.log",
    resources:
        gpu=1,
    conda:
        "../../envs/kmeans.yaml"
    shell:
        visfeat("kmeans-train {params.args} --out {output.centroids} --npy {output.npy} {input}")


rule kmeans_assign:
    # batched nearest-centroid codes for every grid cell of one dataset: a store + X-LXMERT's pickle
    input:
        centroids=f"{R}/kmeans/{{kmeans}}/centroids.h5",
        store=lambda wc: f"{R}/{wc.dataset}/{config['kmeans'][wc.kmeans]['extractor']}.h5",
    output:
        codes=f"{R}/kmeans/{{kmeans}}/{{dataset}}.h5",
        pickle=f"{R}/kmeans/{{kmeans}}/{{dataset}}_codes.pkl",
    params:
        gpu=lambda wc: config["kmeans"][wc.kmeans]["gpu"],
    log:
        "logs/kmeans_assign/{kmeans}/{dataset}.log",
    resources:
        gpu=1,
    conda:
        "../../envs/kmeans.yaml"
    shell:
        visfeat(
            "kmeans-assign --centroids {input.centroids} --gpu {params.gpu} --out {output.codes} "
            "--pickle {output.pickle} {input.store}"
        )


rule kmeans:
    # every configured k-means job: centroids, and codes for each target dataset
    input:
        get_kmeans_outputs(),
    message:
        "k-means: " + (", ".join(config["kmeans"]) or "no k-means configured (the kmeans: section is empty)")
