"""s3:// input and output against a real S3 API: moto's server mode on loopback, started here.

The endpoint and credentials reach pyarrow only through the standard AWS_* environment variables
(no test-only code path), and the module's Ray cluster is started after they are set, so its
workers inherit them exactly as a real cluster's workers get them from `runtime_env`.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import re
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fashion_batch.cli import main
from fashion_batch.io.fs import filesystem
from fashion_batch.io.inputs import list_input_files
from tests.helpers import DIRTY_ROWS, dirty_table, own_ray

pytestmark = pytest.mark.own_ray

BUCKET = "fashion-batch-test"
CLEAN_ROWS = 300  # plus the 10 dirty rows (conftest.DIRTY_ROWS): 4 of them are quarantined


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 (free port) and the AWS_* env pointing at it; a boto3
    client for setting up and for checking what the job wrote independently of pyarrow."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    mp = pytest.MonkeyPatch()
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        mp.delenv(name, raising=False)
    mp.setenv("AWS_ENDPOINT_URL", endpoint)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_REGION", "us-east-1")
    client = boto3.client("s3")  # endpoint from AWS_ENDPOINT_URL, like pyarrow
    client.create_bucket(Bucket=BUCKET)
    yield client
    mp.undo()
    server.stop()


@pytest.fixture(scope="module")
def ray_s3(s3):
    """The module's Ray cluster, started only once the AWS_* env is in place (workers inherit)."""
    with own_ray(num_cpus=2) as ray:
        yield ray


def _catalog_table() -> pa.Table:
    rng = np.random.default_rng(0)
    colors = ["red", "black", "navy", "beige", "green"]
    kinds = ["leather handbag", "wool coat", "denim jacket", "silk scarf", "running shoes"]
    clean = pa.table(
        {
            "listing_id": pa.array(range(1000, 1000 + CLEAN_ROWS), pa.int64()),
            "title": [f"{rng.choice(colors)} {rng.choice(kinds)} #{i}" for i in range(CLEAN_ROWS)],
            "description": [
                f"Pre-loved, size {i % 7}, ships in {i % 3 + 1} days" for i in range(CLEAN_ROWS)
            ],
            "price": pa.array(rng.uniform(5, 300, CLEAN_ROWS)),
        }
    )
    return pa.concat_tables([dirty_table().cast(clean.schema), clean])


def _put_parquet(client, key: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    client.put_object(Bucket=BUCKET, Key=key, Body=buf.getvalue())


@pytest.fixture(scope="module")
def s3_catalog(s3) -> pa.Table:
    """310 rows over three files (the dirty rows in the first two, so the duplicate id crosses a
    file boundary), plus a `_SUCCESS` marker the job must skip."""
    table = _catalog_table()
    _put_parquet(s3, "catalog/a-0.parquet", table.slice(0, 5))
    _put_parquet(s3, "catalog/a-1.parquet", table.slice(5, 105))
    _put_parquet(s3, "catalog/b-0.parquet", table.slice(110))
    s3.put_object(Bucket=BUCKET, Key="catalog/_SUCCESS", Body=b"")
    return table


def _keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _read_parquet(client, key: str) -> pa.Table:
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return pq.read_table(io.BytesIO(body))


def test_filesystem_reads_endpoint_from_env_and_pickles_it(s3, s3_catalog):
    fs, path = filesystem(f"s3://{BUCKET}/catalog/")
    assert path == f"{BUCKET}/catalog"
    clone = pickle.loads(pickle.dumps(fs))  # what a Ray worker receives
    assert clone.region == fs.region == "us-east-1"
    assert clone.get_file_info(f"{BUCKET}/catalog/a-0.parquet").size > 0
    _, files = list_input_files(f"s3://{BUCKET}/catalog/")
    assert files == [f"{BUCKET}/catalog/{n}.parquet" for n in ("a-0", "a-1", "b-0")]


@pytest.fixture(scope="module")
def s3_run(s3, s3_catalog, ray_s3, tiny_distilbert_dir):
    """`embed` from s3://BUCKET/catalog/ to s3://BUCKET/out/: (exit code, stdout, stderr)."""
    argv = ["embed", "--input", f"s3://{BUCKET}/catalog/", "--output", f"s3://{BUCKET}/out/"]
    argv += ["--model", tiny_distilbert_dir, "--rows-per-part", "64", "--batch-size", "32"]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_embed_s3_to_s3_every_row_once(s3, s3_catalog, s3_run, tiny_distilbert_dir):
    rc, out, err = s3_run
    assert rc == 0, err
    assert "rows in      310" in out
    # The run report: per-stage wall time and rows/s in the manifest and on the summary screen.
    assert re.search(r"stages +plan [\d.]+s \([\d.]+ rows/s\), embed_and_write [\d.]+s \(", out)

    keys = _keys(s3, "out/")
    assert not [k for k in keys if ".tmp-" in k], keys
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key="out/manifest.json")["Body"].read())
    assert manifest["rows_in"] == len(s3_catalog) == 310
    assert manifest["rows_quarantined"] == 4
    assert manifest["rows_out"] == 306
    assert manifest["input"] == f"s3://{BUCKET}/catalog/"
    assert manifest["dim"] == 32
    seconds, rates = manifest["stage_seconds"], manifest["stage_rows_per_s"]
    assert set(seconds) == set(rates) == {"plan", "embed_and_write"}
    for stage in seconds:
        assert rates[stage] == pytest.approx(310 / seconds[stage], rel=0.01)
    files = [k for k in keys if re.fullmatch(r"out/(quarantine/)?part-\d{5}\.parquet", k)]
    assert sorted(f"out/{f}" for f in manifest["files"]) == files
    assert "out/manifest.json" in keys
    parts = [_read_parquet(s3, k) for k in files if k.startswith("out/part-")]
    quarantine = [_read_parquet(s3, k) for k in files if k.startswith("out/quarantine/")]
    embedded = pa.concat_tables(parts)
    q = pa.concat_tables(quarantine)
    assert embedded.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    assert embedded.schema.field("listing_id").type == pa.int64()
    assert embedded.schema.metadata[b"dim"] == b"32"
    ids = embedded.column("listing_id").to_pylist()
    assert len(ids) == len(set(ids)) == 306
    expected_q = [(r[0], r[3]) for r in DIRTY_ROWS if r[3]]
    got_q = list(zip(q["listing_id"].to_pylist(), q["reason"].to_pylist(), strict=True))
    assert sorted(got_q, key=str) == sorted(expected_q, key=str)
    # Every input row exactly once: embedded ids + quarantined rows = the input, as a multiset.
    input_ids = s3_catalog.column("listing_id").to_pylist()
    assert Counter(ids + q["listing_id"].to_pylist()) == Counter(input_ids)
    vectors = embedded.column("embedding").combine_chunks().flatten().to_numpy()
    assert np.isfinite(vectors).all() and np.abs(vectors).sum() > 0

    # The vectors are those of the right rows: a clean row, encoded directly.
    from fashion_batch.encoders.models import load_model

    model = load_model(tiny_distilbert_dir, "cpu")
    row = s3_catalog.slice(200, 1).to_pylist()[0]
    direct = model.encode([f"{row['title']}. {row['description']}"], convert_to_numpy=True)[0]
    got = np.asarray(embedded.column("embedding")[ids.index(row["listing_id"])].as_py())
    np.testing.assert_allclose(got, direct, rtol=1e-4, atol=1e-5)


def test_glob_input_on_s3(s3, s3_catalog, ray_s3, tiny_distilbert_dir, capsys):
    """A glob picks two of the three files; only their rows are embedded."""
    argv = ["embed", "--input", f"s3://{BUCKET}/catalog/a-*.parquet"]
    argv += ["--output", f"s3://{BUCKET}/out-glob", "--model", tiny_distilbert_dir]
    assert main(argv) == 0, capsys.readouterr().err
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key="out-glob/manifest.json")["Body"].read())
    assert manifest["rows_in"] == 110
    assert manifest["rows_out"] + manifest["rows_quarantined"] == 110
    keys = _keys(s3, "out-glob/")
    files = [f"out-glob/{f}" for f in manifest["files"]]
    assert set(files) <= set(keys)
    rows = sum(len(_read_parquet(s3, k)) for k in files)
    assert rows == 110
    assert not [k for k in keys if ".tmp-" in k], keys


@pytest.mark.parametrize(
    "flag, uri, words",
    [
        ("--input", "s3://no-such-bucket-fb/catalog/", "no such file or directory"),
        ("--input", f"s3://{BUCKET}/no/such/prefix/", "no such file or directory"),
        ("--input", f"s3://{BUCKET}/catalog/z-*.parquet", "no .parquet files found"),
        ("--output", "s3://no-such-bucket-fb/out/", "bucket 'no-such-bucket-fb' does not exist"),
    ],
)
def test_missing_bucket_or_key_exits_2_naming_the_uri(s3, s3_catalog, flag, uri, words, capsys):
    """Found on the driver before Ray starts or anything is written (no ray fixture here)."""
    args = {"--input": f"s3://{BUCKET}/catalog/", "--output": f"s3://{BUCKET}/out-bad/"}
    args[flag] = uri
    before = _keys(s3, "")
    argv = ["embed", "--input", args["--input"], "--output", args["--output"]]
    assert main([*argv, "--model", "builtin:minilm"]) == 2
    err = capsys.readouterr().err
    assert f"{flag} {uri}" in err and words in err, err
    assert "Traceback" not in err
    assert _keys(s3, "") == before


def test_search_over_s3_output(s3, s3_catalog, s3_run, tiny_distilbert_dir, capsys):
    """`search` reads the manifest, the parts and the catalog from S3."""
    assert s3_run[0] == 0, s3_run[2]
    argv = ["search", "--embeddings", f"s3://{BUCKET}/out/", "--catalog", f"s3://{BUCKET}/catalog/"]
    assert main([*argv, "--model", tiny_distilbert_dir, "red leather handbag", "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    ids = {int(line.split()[2]) for line in lines[1:]}
    assert ids <= set(s3_catalog.column("listing_id").to_pylist())
    assert "(not in --catalog)" not in "\n".join(lines)


def test_sink_lancedb_on_s3(s3, s3_catalog, s3_run, tiny_distilbert_dir, capsys):
    """`--sink lancedb://s3://...` talks to the same endpoint through the same AWS_* environment.
    Added to the finished s3_run command, it loads that output without embedding it again."""
    assert s3_run[0] == 0, s3_run[2]
    argv = ["embed", "--input", f"s3://{BUCKET}/catalog/", "--output", f"s3://{BUCKET}/out/"]
    argv += ["--model", tiny_distilbert_dir, "--rows-per-part", "64", "--batch-size", "32"]
    sink = f"lancedb://s3://{BUCKET}/lance"
    assert main([*argv, "--sink", sink, "--sink-columns", "price"]) == 0, capsys.readouterr().err
    assert f"sink         {sink} table listings: 306 rows" in capsys.readouterr().out
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key="out/manifest.json")["Body"].read())
    assert manifest["sink"]["uri"] == sink and manifest["sink"]["rows"] == 306
    assert any(k.startswith("lance/listings.lance/") for k in _keys(s3, "lance/"))

    from fashion_batch.sinks import parse_sink
    from fashion_batch.sinks.lancedb import connect

    table = connect(parse_sink(sink)).open_table("listings").to_arrow()
    keys = _keys(s3, "out/part-")
    parts = pa.concat_tables(_read_parquet(s3, k) for k in keys)
    assert sorted(table["listing_id"].to_pylist()) == sorted(parts["listing_id"].to_pylist())
    prices = dict(zip(table["listing_id"].to_pylist(), table["price"].to_pylist(), strict=True))
    by_id = {r["listing_id"]: r["price"] for r in reversed(s3_catalog.to_pylist())}
    assert all(prices[i] == by_id[i] for i in prices)  # the first occurrence's price

    search = ["search", "--embeddings", sink, "--catalog", f"s3://{BUCKET}/catalog/"]
    assert main([*search, "--model", tiny_distilbert_dir, "red leather handbag", "-k", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 4


def test_credentials_in_uris_are_never_recorded_or_printed(
    s3, s3_catalog, ray_s3, tiny_distilbert_dir, capfd
):
    """pyarrow takes credentials from `s3://KEY:SECRET@bucket/...` (moto accepts any); they must
    not reach the manifest, run state, part files, logs or error messages."""
    secret = "sEcReT-do-not-leak-42"
    creds = f"testing:{secret}@"
    argv = ["embed", "--input", f"s3://{creds}{BUCKET}/catalog/", "--model", tiny_distilbert_dir]
    argv += ["--rows-per-part", "64", "--batch-size", "32"]
    assert main([*argv, "--output", f"s3://{creds}{BUCKET}/creds-run/"]) == 0
    assert main([*argv, "--output", f"s3://{creds}{BUCKET}/creds-run/", "--normalize"]) == 2
    assert main(["-v", *argv, "--output", f"s3://{creds}no-such-bucket-here/x/"]) == 2
    printed = capfd.readouterr()
    assert "***@" in printed.err and secret not in printed.out + printed.err
    keys = _keys(s3, "creds-run/")
    assert any(k.endswith("manifest.json") for k in keys) and any("_state/" in k for k in keys)
    for key in keys:
        assert secret.encode() not in s3.get_object(Bucket=BUCKET, Key=key)["Body"].read(), key


def test_driver_sigkill_mid_write_then_rerun_on_s3(s3, s3_catalog, ray_s3, tiny_distilbert_dir):
    """kill -9 of the driver while parts are being written to S3, then the same command again:
    the committed units are kept (not rewritten), the rest are done, every row is in exactly one
    of output / quarantine, and no temporary object is left. (The local-disk twin of this test is
    tests/embed/test_faults.py::test_driver_sigkill_then_rerun.)"""
    import os
    import signal
    import subprocess
    import sys
    import time

    address = ray_s3.get_runtime_context().gcs_address
    argv = [sys.executable, "-m", "fashion_batch", "embed", "--input", f"s3://{BUCKET}/catalog/"]
    argv += ["--output", f"s3://{BUCKET}/out-killed/", "--model", tiny_distilbert_dir]
    argv += ["--rows-per-part", "16", "--batch-size", "8", "--num-actors", "1"]
    env = {**os.environ, "RAY_ADDRESS": address, "FASHION_BATCH_FAULT_UNIT_DELAY_S": "0.5"}
    driver = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    done_prefix = "out-killed/_state/done/"
    try:
        deadline = time.monotonic() + 300
        while len([k for k in _keys(s3, done_prefix) if k.endswith(".json")]) < 3:
            assert driver.poll() is None, driver.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no 3 units committed in 300 s"
            time.sleep(0.2)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    keys = _keys(s3, "out-killed/")
    assert "out-killed/manifest.json" not in keys
    committed = [
        k.rsplit("/", 1)[1].removesuffix(".json")
        for k in _keys(s3, done_prefix)
        if k.endswith(".json")  # not the directory marker object pyarrow creates
    ]
    units = -(-len(s3_catalog) // 16)  # 16-row units over 310 rows split into three files
    assert 3 <= len(committed) < units
    staged = {f"out-killed/_staging/{d}{n}.parquet" for n in committed for d in ("", "quarantine/")}
    assert staged & set(keys)  # the committed units, staged until the run publishes
    assert not [k for k in keys if re.fullmatch(r"out-killed/(quarantine/)?part-\d{5}\.parquet", k)]
    # What a writer killed between its temporary object and the move leaves (io/atomic.py), in
    # case the kill above did not land there: the rerun must remove it.
    tmp = "out-killed/_staging/.unit-00009.parquet.tmp-0123abcd"
    s3.put_object(Bucket=BUCKET, Key=tmp, Body=b"PAR1")

    assert main(argv[3:]) == 0  # the same command, in process, on the module's cluster
    manifest = json.loads(
        s3.get_object(Bucket=BUCKET, Key="out-killed/manifest.json")["Body"].read()
    )
    assert manifest["units"]["resumed"] >= len(committed)  # kept, not redone
    keys = _keys(s3, "out-killed/")
    assert not [k for k in keys if re.fullmatch(r"out-killed/_staging/.*\.parquet", k)], keys
    assert not [k for k in keys if ".tmp-" in k], keys
    files = [k for k in keys if re.fullmatch(r"out-killed/(quarantine/)?part-\d{5}\.parquet", k)]
    assert sorted(f"out-killed/{f}" for f in manifest["files"]) == files
    ids = []
    for key in files:
        ids += _read_parquet(s3, key).column("listing_id").to_pylist()
    assert Counter(ids) == Counter(s3_catalog.column("listing_id").to_pylist())
