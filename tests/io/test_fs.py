"""io/fs.py without a server: what an S3 filesystem carries to the Ray workers it is pickled to."""

from __future__ import annotations

import pickle

import pyarrow.fs as pafs
import pytest

from fashion_batch.io.fs import filesystem


@pytest.fixture
def custom_endpoint(monkeypatch):
    """An S3-compatible endpoint (MinIO, R2, moto) that is never contacted: opening a filesystem
    makes no request."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    return monkeypatch


def test_the_driver_s_region_travels_to_workers_with_a_custom_endpoint(custom_endpoint):
    fs, path = filesystem("s3://bucket/listings/")
    assert path == "bucket/listings" and fs.region == "eu-west-1"
    blob = pickle.dumps(fs)
    custom_endpoint.setenv("AWS_REGION", "us-west-2")  # a worker whose environment says otherwise
    assert pickle.loads(blob).region == "eu-west-1"


def test_the_region_is_added_to_the_uri_s_own_options(custom_endpoint):
    """pyarrow compares filesystems by their options: credentials and parameters in the URI are
    kept, and a region the URI names wins over the environment's."""
    fs, _ = filesystem("s3://KEY:SECRET@bucket/listings?scheme=http")
    same, _ = pafs.FileSystem.from_uri(
        "s3://KEY:SECRET@bucket/listings?scheme=http&region=eu-west-1"
    )
    assert fs == same
    fs, _ = filesystem("s3://bucket/listings?region=ap-south-1")
    assert fs.region == pickle.loads(pickle.dumps(fs)).region == "ap-south-1"
