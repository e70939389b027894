"""Reads an export with the retrieval ecosystem's own clients; run by .venv-retrieval's python (their pins,
numpy<2 and pandas<3, conflict with .venv's): `python retrieval_clients.py OUT KIND RESULT.npz`.

Writes to RESULT.npz what the clients gave: `vectors` and `rows` (its `i` column) from EmbeddingReader over
OUT/{KIND}_emb with file_format="npy"; `paired` and `ids` from file_format="parquet_npy" (each npy part with its
OUT/metadata part, the store's id column); `nearest`: for each vector, the row autofaiss's index (built by
`autofaiss.build_index` from the same folder) ranks first.
"""
import sys
import tempfile
from pathlib import Path

import numpy as np


def main(out: str, kind: str, result: str) -> None:
    import faiss
    from autofaiss import build_index
    from embedding_reader import EmbeddingReader

    emb = f"{out}/{kind}_emb"
    id_col = "caption_id" if kind == "text" else "image_id"
    reader = EmbeddingReader(emb, file_format="npy")
    vectors, rows = read(reader, "i")
    paired, ids = read(EmbeddingReader(emb, file_format="parquet_npy", meta_columns=[id_col],
                                       metadata_folder=f"{out}/metadata"), id_col)
    with tempfile.TemporaryDirectory() as tmp:
        index_path = str(Path(tmp) / "knn.index")
        build_index(embeddings=emb, index_path=index_path, index_infos_path=str(Path(tmp) / "infos.json"),
                    max_index_memory_usage="1G", current_memory_available="2G", verbose=30)
        index = faiss.read_index(index_path)
        _, nearest = index.search(vectors.astype(np.float32), 1)
    np.savez(result, vectors=vectors, rows=rows, paired=paired, ids=ids, nearest=nearest[:, 0], count=reader.count)


def read(reader, column: str):
    """Every vector and its metadata `column`, in batches smaller than a part (they cross part boundaries)."""
    vectors, meta = [], []
    for batch, m in reader(batch_size=7, start=0, end=reader.count, show_progress=False):
        vectors.append(batch)
        meta += m[column].tolist()
    return np.concatenate(vectors), np.asarray(meta)


if __name__ == "__main__":
    main(*sys.argv[1:4])
