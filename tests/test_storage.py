"""fsg_ray.storage: the same calls on local paths, file:// URIs and a real (loopback) S3 endpoint."""

import os

import boto3
import pyarrow.fs as pafs
import pytest

from fsg_ray import storage


def test_local_write_read_list_exists_delete_round_trip(tmp_path):
    root = str(tmp_path / "run")
    storage.write_bytes(storage.join(root, "ckpt", "b.bin"), b"second")
    storage.write_bytes(storage.join(root, "ckpt", "a.bin"), b"first")

    assert storage.read_bytes(storage.join(root, "ckpt", "a.bin")) == b"first"
    assert storage.list_dir(storage.join(root, "ckpt")) == ["a.bin", "b.bin"]
    assert storage.exists(storage.join(root, "ckpt", "a.bin"))

    storage.delete(storage.join(root, "ckpt", "a.bin"))
    assert not storage.exists(storage.join(root, "ckpt", "a.bin"))
    storage.delete(storage.join(root, "ckpt"))
    assert storage.list_dir(root) == []


def test_local_write_leaves_no_temp_files_and_replaces_the_whole_file(tmp_path):
    target = tmp_path / "model.pt"
    storage.write_bytes(target, b"x" * 1_000_000)
    storage.write_bytes(target, b"short")

    assert target.read_bytes() == b"short"
    assert os.listdir(tmp_path) == ["model.pt"]


def test_local_write_that_fails_leaves_the_previous_file_and_no_temp(tmp_path):
    target = tmp_path / "model.pt"
    storage.write_bytes(target, b"old")

    with pytest.raises(TypeError):
        storage.write_bytes(target, object())

    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.pt"]


def test_file_uris_address_the_local_disk(tmp_path):
    uri = f"file://{tmp_path}/with%20space/a.txt"
    storage.write_bytes(uri, b"hello")

    assert (tmp_path / "with space" / "a.txt").read_bytes() == b"hello"
    assert storage.read_bytes(uri) == b"hello"
    assert storage.list_dir(f"file://{tmp_path}") == ["with space"]
    assert not storage.is_remote(uri)


def test_list_dir_of_missing_directory_is_empty(tmp_path):
    assert storage.list_dir(tmp_path / "never-written") == []


def test_makedirs_creates_parents_and_tolerates_existing(tmp_path):
    storage.makedirs(tmp_path / "a" / "b")
    storage.makedirs(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()


def test_missing_local_file_raises_object_not_found_naming_it(tmp_path):
    missing = str(tmp_path / "nope.bin")
    with pytest.raises(storage.ObjectNotFound, match="nope.bin"):
        storage.read_bytes(missing)
    with pytest.raises(storage.ObjectNotFound, match="nope.bin"):
        storage.delete(missing)


def test_join_keeps_the_scheme_and_never_lets_a_part_replace_the_base():
    assert storage.join("s3://bucket/run/", "ckpt", "/model.pt") == "s3://bucket/run/ckpt/model.pt"
    assert storage.join("file:///data", "x") == "file:///data/x"
    assert storage.join("out", "a", "b") == "out/a/b"


def test_unsupported_scheme_is_a_storage_error():
    with pytest.raises(storage.StorageError, match="gs"):
        storage.resolve("gs://bucket/key")


def test_s3_resolves_to_the_endpoint_from_the_environment(s3_endpoint):
    filesystem, path = storage.resolve("s3://some-bucket/a/b")

    assert isinstance(filesystem, pafs.S3FileSystem)
    assert path == "some-bucket/a/b"
    assert storage.resolve("s3://other-bucket/c")[0] is filesystem
    assert storage.is_remote("s3://some-bucket/a/b")


def test_s3_write_read_list_round_trip_is_visible_to_boto3(s3_endpoint, s3_bucket):
    prefix = f"s3://{s3_bucket}/run"
    storage.write_bytes(storage.join(prefix, "ckpt", "b.bin"), b"second")
    storage.write_bytes(storage.join(prefix, "ckpt", "a.bin"), b"first")

    assert storage.read_bytes(storage.join(prefix, "ckpt", "a.bin")) == b"first"
    assert storage.list_dir(storage.join(prefix, "ckpt")) == ["a.bin", "b.bin"]
    assert storage.list_dir(prefix) == ["ckpt"]
    assert storage.exists(storage.join(prefix, "ckpt"))
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    assert client.get_object(Bucket=s3_bucket, Key="run/ckpt/a.bin")["Body"].read() == b"first"


def test_s3_multipart_sized_object_round_trips(s3_bucket):
    data = os.urandom(12 * 2**20)  # above pyarrow's 10 MiB part size
    storage.write_bytes(f"s3://{s3_bucket}/big.bin", data)
    assert storage.read_bytes(f"s3://{s3_bucket}/big.bin") == data


def test_s3_delete_removes_objects_and_prefixes(s3_bucket):
    storage.write_bytes(f"s3://{s3_bucket}/old/a", b"1")
    storage.write_bytes(f"s3://{s3_bucket}/old/b", b"2")
    storage.write_bytes(f"s3://{s3_bucket}/keep", b"3")

    storage.delete(f"s3://{s3_bucket}/old")

    assert storage.list_dir(f"s3://{s3_bucket}") == ["keep"]


def test_s3_list_dir_of_missing_prefix_is_empty(s3_bucket):
    assert storage.list_dir(f"s3://{s3_bucket}/never-written") == []
    assert not storage.exists(f"s3://{s3_bucket}/never-written")


def test_s3_missing_key_raises_object_not_found_naming_the_uri(s3_bucket):
    uri = f"s3://{s3_bucket}/no/such/key.bin"
    with pytest.raises(storage.ObjectNotFound, match=uri):
        storage.read_bytes(uri)
    with pytest.raises(storage.ObjectNotFound, match=uri):
        storage.delete(uri)


@pytest.mark.parametrize(
    "operation",
    [
        lambda uri: storage.read_bytes(uri),
        lambda uri: storage.write_bytes(uri, b"data"),
        lambda uri: storage.exists(uri),
        lambda uri: storage.list_dir(uri),
        lambda uri: storage.delete(uri),
        lambda uri: storage.makedirs(uri),
    ],
    ids=["read_bytes", "write_bytes", "exists", "list_dir", "delete", "makedirs"],
)
def test_s3_missing_bucket_raises_bucket_not_found_naming_it(s3_endpoint, operation):
    with pytest.raises(storage.BucketNotFound, match="'no-such-bucket-fsg'"):
        operation("s3://no-such-bucket-fsg/some/key")


def test_s3_exists_on_a_missing_bucket_itself_is_false(s3_endpoint):
    assert not storage.exists("s3://no-such-bucket-fsg")


@pytest.mark.parametrize(
    "operation",
    [
        lambda uri: storage.read_bytes(uri),
        lambda uri: storage.write_bytes(uri, b"data"),
        lambda uri: storage.exists(uri),
        lambda uri: storage.is_dir(uri),
        lambda uri: storage.list_dir(uri),
        lambda uri: storage.delete(uri),
        lambda uri: storage.makedirs(uri),
    ],
    ids=["read_bytes", "write_bytes", "exists", "is_dir", "list_dir", "delete", "makedirs"],
)
def test_an_unreachable_s3_endpoint_is_one_line_naming_the_uri_the_endpoint_and_the_cause(unreachable_s3_endpoint, operation):
    with pytest.raises(storage.EndpointUnreachable) as raised:
        operation("s3://some-bucket/some/key")
    message = str(raised.value)
    assert message.startswith(f"s3://some-bucket/some/key: cannot reach the S3 endpoint {unreachable_s3_endpoint}: ")
    assert "connect" in message.lower() and "\n" not in message
