rule kmeans:
    # Target for the faiss k-means jobs under `kmeans:` in the config (none can be configured yet).
    message:
        "no k-means configured (the kmeans: section of config/config.yaml is empty)"
