"""The shared store (ml/store shared storage): a local folder and an in-memory object store."""

from __future__ import annotations

import stat
import uuid

import pytest

from ml.platform.storage import SharedStore, StoreError


def test_the_local_store_writes_atomically_privately_and_stays_in_its_root(tmp_path):
    st = SharedStore(f"file://{tmp_path}/shared").child("batches")
    assert st.is_local and st.where("b-1", "x.parquet") == f"{tmp_path}/shared/batches/b-1/x.parquet"
    with pytest.raises(RuntimeError), st.writer("b-1", "x.bin") as f:
        f.write(b"half")
        raise RuntimeError("the writer died")
    assert not st.exists("b-1", "x.bin") and st.list("b-1") == []  # no half file, no temporary left
    st.write_bytes(b"whole", "b-1", "x.bin")
    p = tmp_path / "shared" / "batches" / "b-1" / "x.bin"
    assert p.read_bytes() == b"whole" and st.read_bytes("b-1", "x.bin") == b"whole"
    assert stat.S_IMODE(p.stat().st_mode) == 0o600 and stat.S_IMODE(p.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(p.parent.parent.stat().st_mode) == 0o700
    for bad in ("../x", "b-1/../../x", "b-1/../.."):
        with pytest.raises(StoreError, match="leaves the shared store"):
            st.path(bad)
    assert st.path("/etc/passwd") == f"{tmp_path}/shared/batches/etc/passwd"  # a key, always under the root
    with pytest.raises(StoreError, match="reads"):
        st.open("b-1", "x.bin", mode="wb")
    st.remove("b-1", recursive=True)
    assert not st.exists("b-1") and st.list() == []


def test_a_write_that_fails_publishes_nothing_on_an_object_store():
    st = SharedStore(f"memory://store-{uuid.uuid4().hex[:8]}")
    with pytest.raises(RuntimeError), st.writer("b-1", "x.bin") as f:
        f.write(b"half")
        raise RuntimeError("the writer died")
    assert not st.exists("b-1", "x.bin")
    st.write_bytes(b"whole", "b-1", "x.bin")
    assert st.read_bytes("b-1", "x.bin") == b"whole" and st.list("b-1") == ["x.bin"]
    st.remove(recursive=True)
