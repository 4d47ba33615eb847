"""Which paths every node of a cluster sees: s3://, or a local path on a network mount."""

from sdt_ray.storage import is_shared

MOUNTS = """\
/dev/vda / ext4 rw,relatime 0 0
fs-1.efs.amazonaws.com:/ /mnt/efs nfs4 rw,vers=4.1 0 0
s3fs /mnt/bucket fuse.s3fs rw 0 0
tmpfs /mnt/efs/scratch tmpfs rw 0 0
"""


def test_shared_paths(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS)
    assert is_shared("s3://bucket/runs", str(mounts))
    assert is_shared("/mnt/efs/runs/meld", str(mounts))
    assert is_shared("/mnt/bucket/x", str(mounts))
    assert not is_shared("/home/me/runs", str(mounts))
    assert not is_shared("/mnt/efs/scratch/x", str(mounts))  # the longest mount point decides
    assert not is_shared("/mnt/efsother/x", str(mounts))  # a prefix of a name is not a parent folder
    assert not is_shared("/anything", str(tmp_path / "no-such-mounts"))
