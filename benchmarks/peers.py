"""What a user would write instead of `fashion-batch embed`, one child-process entrypoint each.

    plain           read the whole catalog → ONE SentenceTransformer.encode(batch_size=128) over
                    every text (ST sorts by length inside encode) → write Parquet. torch's
                    default threads. The baseline every ratio is against.
    plain-per-file  the same per Parquet file (a weaker loop, kept as an extra row)
    plain-onnx      ST's own backend="onnx" (needs optimum; reported as unavailable without it)
    raydata         read_parquet → map_batches(SentenceTransformer class, ActorPoolStrategy, one
                    actor per CPU at 0.5 CPU each so read tasks keep a CPU) → write_parquet
    daft            daft.read_parquet → daft.functions.embed_text(provider="transformers") →
                    write_parquet, native runner; Daft lives outside the project's venv

Each prints one line `BENCH {json}` with its phases (import, load, read, encode, write seconds)
so the fixed costs are visible beside the wall time the parent measures. Texts are composed as a
user would (`f"{title}. {description}"`); on these clean catalogs that is the job's text too.

    python benchmarks/peers.py plain CATALOG OUT MODEL
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

PEERS = ("plain", "plain-per-file", "plain-onnx", "raydata", "daft")
_T0 = time.perf_counter()


def _report(**phases) -> None:
    phases["total_in_process_s"] = time.perf_counter() - _T0
    print("BENCH " + json.dumps(phases), flush=True)


def _texts(table) -> list[str]:
    d = table.select(["title", "description"]).to_pydict()
    return [f"{t}. {s}" for t, s in zip(d["title"], d["description"], strict=True)]


def _write(ids, vectors, path: Path) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    v = np.ascontiguousarray(vectors, dtype=np.float32)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"listing_id": ids, "embedding": emb}), path)


def plain(catalog: str, out: str, model: str, per_file: bool = False, onnx: bool = False) -> None:
    import pyarrow.parquet as pq
    from sentence_transformers import SentenceTransformer

    t = time.perf_counter()
    imported = t - _T0
    import torch

    kwargs = {"backend": "onnx"} if onnx else {}
    cuda = torch.cuda.is_available()
    st = SentenceTransformer(model, device="cuda" if cuda else "cpu", **kwargs)
    if cuda:
        st.half()  # what a user on a GPU does (and the job's `auto` precision)
    loaded = time.perf_counter()
    files = sorted(Path(catalog).glob("*.parquet"))
    read_s = encode_s = write_s = 0.0
    groups = [[f] for f in files] if per_file else [files]
    for i, group in enumerate(groups):
        t0 = time.perf_counter()
        table = pq.ParquetDataset(group).read(columns=["listing_id", "title", "description"])
        texts = _texts(table)
        t1 = time.perf_counter()
        vectors = st.encode(texts, batch_size=128, show_progress_bar=False)
        t2 = time.perf_counter()
        _write(table.column("listing_id"), vectors, Path(out) / f"part-{i:05d}.parquet")
        read_s, encode_s = read_s + t1 - t0, encode_s + t2 - t1
        write_s += time.perf_counter() - t2
    _report(import_s=imported, load_s=loaded - t, read_s=read_s, encode_s=encode_s, write_s=write_s)


class _RayEmbedder:
    def __init__(self, model: str):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(model, device="cpu")

    def __call__(self, batch):
        texts = [f"{t}. {s}" for t, s in zip(batch["title"], batch["description"], strict=True)]
        vectors = self.model.encode(texts, batch_size=128, show_progress_bar=False)
        return {"listing_id": batch["listing_id"], "embedding": list(vectors)}


def raydata(catalog: str, out: str, model: str) -> None:
    import ray

    t = time.perf_counter()
    ray.init(include_dashboard=False)
    started = time.perf_counter()
    cpus = int(ray.cluster_resources()["CPU"])
    ds = ray.data.read_parquet(catalog, columns=["listing_id", "title", "description"])
    ds = ds.map_batches(
        _RayEmbedder,
        fn_constructor_kwargs={"model": model},
        compute=ray.data.ActorPoolStrategy(size=cpus),
        num_cpus=0.5,  # 1 CPU each would leave none for the read tasks: the job would hang
        batch_size=1024,
    )
    ds.write_parquet(out)
    done = time.perf_counter()
    ray.shutdown()
    end = time.perf_counter()
    _report(ray_init_s=started - t, pipeline_s=done - started, shutdown_s=end - done)


def daft_script(catalog: str, out: str, model: str) -> None:
    import daft
    from daft.functions import embed_text

    t = time.perf_counter()
    df = daft.read_parquet(catalog)
    df = df.with_column("text", df["title"] + ". " + df["description"])
    df = df.with_column("embedding", embed_text(df["text"], provider="transformers", model=model))
    df.select("listing_id", "embedding").write_parquet(out)
    _report(pipeline_s=time.perf_counter() - t)


def main(argv: list[str]) -> int:
    peer, catalog, out, model = argv
    if peer == "raydata":
        raydata(catalog, out, model)
    elif peer == "daft":
        daft_script(catalog, out, model)
    else:
        plain(catalog, out, model, per_file=peer == "plain-per-file", onnx=peer == "plain-onnx")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
