"""URIs to filesystems: local paths, file:// and s3://.

S3 goes through s3fs, so the endpoint, region and credentials come from the
usual AWS environment variables (AWS_ENDPOINT_URL, AWS_DEFAULT_REGION,
AWS_ACCESS_KEY_ID, ...), the same way on the driver and on Ray workers.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import InputError


def is_remote(uri: str) -> bool:
    return uri.startswith("s3://")


def set_s3_environment(endpoint: str | None, region: str | None) -> None:
    """`--s3-endpoint` / `--s3-region` as the AWS variables that s3fs reads here and local Ray
    workers inherit."""
    if endpoint:  # AWS_ENDPOINT_URL_S3 wins over AWS_ENDPOINT_URL where both are set: set both
        os.environ["AWS_ENDPOINT_URL"] = os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
    if region:
        os.environ["AWS_DEFAULT_REGION"] = region


NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "lustre", "ceph", "glusterfs", "beegfs", "gpfs", "9p")


def is_shared(uri: str, mounts: str = "/proc/mounts") -> bool:
    """Whether every node of a cluster can see `uri`: s3://, or a local path on a network
    filesystem (NFS, Lustre, ... or a FUSE mount such as s3fs/EFS utils), read from /proc/mounts."""
    if is_remote(uri):
        return True
    path = resolve(uri)[1]
    try:
        table = [line.split() for line in Path(mounts).read_text().splitlines()]
    except OSError:
        return False  # no mount table to read (not Linux): a local path is assumed private
    best, kind = "", ""
    for fields in table:
        if len(fields) >= 3 and (path == fields[1] or path.startswith(fields[1].rstrip("/") + "/")) and len(fields[1]) > len(best):
            best, kind = fields[1], fields[2]
    return kind in NETWORK_FILESYSTEMS or kind.startswith("fuse.")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path, file:// or s3:// URI."""
    if uri.startswith("s3://"):
        return s3_filesystem(), uri[len("s3://") :]
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def s3_filesystem() -> pafs.FileSystem:
    import s3fs  # imported here: local-only users never pay for botocore

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    # No listings cache: other processes (Ray workers) add files that this one must see.
    fs = s3fs.S3FileSystem(
        endpoint_url=endpoint,
        client_kwargs={"region_name": region} if region else {},
        use_listings_cache=False,
    )
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_table(uri: str, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file or a folder of Parquet files as one table."""
    with _parquet_dataset(uri) as (dataset, metadata):
        return dataset.to_table(columns=columns).replace_schema_metadata(metadata)


def read_head(uri: str, rows: int) -> pa.Table:
    """The first `rows` rows of a Parquet file or folder, with the first file's schema
    metadata; reads no more than it needs, for checks on a large table."""
    with _parquet_dataset(uri) as (dataset, metadata):
        if not dataset.files:
            raise InputError(f"{uri}: no Parquet files")
        return dataset.head(rows).replace_schema_metadata(metadata)


@contextlib.contextmanager
def _parquet_dataset(uri: str) -> Iterator[tuple[pads.Dataset, dict[bytes, bytes] | None]]:
    """The dataset at `uri` and its first file's schema metadata (label order, encoder),
    with unreadable input turned into one InputError naming the URI."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise InputError(f"{uri}: no such file or folder")
    try:
        dataset = pads.dataset(path, filesystem=fs, format="parquet")
        files = sorted(dataset.files)
        metadata = pq.read_schema(files[0], filesystem=fs).metadata if files else None
        yield dataset, metadata
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{uri}: not a readable Parquet table ({exc})") from None


def write_table(table: pa.Table, uri: str) -> None:
    """Write one Parquet file, creating parent folders. The file appears whole or not at all."""
    _write_atomically(uri, lambda fs, staging: pq.write_table(table, staging, filesystem=fs))


def _write_atomically(uri: str, write, failpoint: str | None = None) -> None:
    """write(fs, staging_path), then a move to `uri`: locally a rename; on S3 a server-side
    copy of a finished object. A write that dies half-way (or an S3 upload that fails after
    its first bytes went out) leaves only a staging name, which readers ignore (it starts
    with '.'), never a partial or empty file at `uri`."""
    fs, path = resolve(uri)
    parent = str(Path(path).parent) if not is_remote(uri) else path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    staging = f"{parent}/.{path.rsplit('/', 1)[-1]}.{uuid.uuid4().hex}.tmp"
    try:
        write(fs, staging)
        if failpoint:
            from .failpoints import reached

            reached(failpoint)
        fs.move(staging, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.delete_file(staging)
        raise


def list_files(uri: str) -> list[str]:
    """URIs of the files directly inside a folder, sorted; [] when it does not exist."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path))
    return sorted(join(uri, Path(i.path).name) for i in infos if i.type == pafs.FileType.File)


def walk(uri: str) -> list[str]:
    """URIs of every file below a folder (any depth), sorted; [] when it does not exist."""
    return [f["uri"] for f in walk_facts(uri)]


def walk_facts(uri: str) -> list[dict]:
    """{"uri", "size", "mtime"} of every file below a folder (any depth), sorted by URI, from
    one listing (no request per file); [] when it does not exist."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    root = path.rstrip("/") + "/"
    facts = [{"uri": join(uri, i.path[len(root):]), "size": i.size, "mtime": i.mtime.isoformat() if i.mtime else None}
             for i in infos if i.type == pafs.FileType.File]
    return sorted(facts, key=lambda f: f["uri"])


def delete(uri: str) -> None:
    """Remove a file or a folder with its contents; nothing when absent."""
    fs, path = resolve(uri)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)


def write_text(uri: str, text: str, failpoint: str | None = None) -> None:
    """Write a small text file (plans, markers) atomically: the old content or the new, whole.
    `failpoint`: a name tests can stop at, between the write aside and the move (failpoints.py)."""

    def write(fs, staging):
        with fs.open_output_stream(staging) as out:
            out.write(text.encode())

    _write_atomically(uri, write, failpoint)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode()


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def upload_dir(local_dir: str, uri: str) -> None:
    """Copy a local folder's files to a local or s3:// folder, replacing what is there."""
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(local_dir, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
