"""The Storage contract, run against both backends: the local folder and an S3-compatible store (moto's
standalone server, a real HTTP endpoint started here)."""

import hashlib
import threading
import time
from pathlib import Path

import boto3
import pytest

from chatforge.settings import reset_settings
from chatforge.storage import LocalStorage, S3Storage, TooLarge, get_storage, restore_newest_folder
from tests.support.service import s3_server

PART = 5 * 1024**2  # the smallest part S3 allows


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("moto")) as env:
        yield env


def _s3(env: dict, tmp: Path, prefix: str, **kw) -> S3Storage:
    bucket = env["CHATFORGE_STORAGE_URL"].split("/")[2]
    return S3Storage(f"s3://{bucket}/{prefix}", tmp / "cache", tmp / "scratch", part_bytes=PART,
                     endpoint=env["AWS_ENDPOINT_URL"], **kw)


@pytest.fixture(autouse=True)
def _aws_credentials(monkeypatch, request):
    if "s3_env" in request.fixturenames or "storage" in request.fixturenames:
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.setenv(k, "test")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    env = request.getfixturevalue("s3_env")
    return _s3(env, tmp_path, f"t-{request.node.name.replace('[', '-').rstrip(']')}-{time.monotonic_ns()}")


class Generated:
    """A stream of n pseudo-random bytes made on demand; records the largest read asked of it."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.pos, self.seed, self.largest_read = n, 0, seed, 0
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        self.largest_read = max(self.largest_read, size)
        size = self.n - self.pos if size < 0 else min(size, self.n - self.pos)
        block = hashlib.sha256(f"{self.seed}-{self.pos}".encode()).digest() * (size // 32 + 1)
        out = block[:size]
        self.pos += size
        self.digest.update(out)
        return out


def _sha(f) -> str:
    h = hashlib.sha256()
    while chunk := f.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def test_streams_a_file_larger_than_one_part_without_holding_it(storage):
    src = Generated(2 * PART + 12345)
    assert storage.put_stream("files/big/raw", src) == src.n
    assert src.largest_read <= PART  # read a part at a time, never the whole stream
    assert storage.size("files/big/raw") == src.n
    with storage.open("files/big/raw") as f:
        assert _sha(f) == src.digest.hexdigest()
    with storage.local_path("files/big/raw") as p:
        assert p.stat().st_size == src.n
    if isinstance(storage, S3Storage):  # it really went up as a 3-part multipart upload
        head = storage.client.head_object(Bucket=storage.bucket, Key=storage._obj("files/big/raw"))
        assert head["ETag"].strip('"').endswith("-3")


def test_ranged_read(storage):
    data = bytes(range(256)) * 40
    storage.put_stream("files/r/raw", _bytes(data))
    assert storage.read_range("files/r/raw", 0, 10) == data[:10]
    assert storage.read_range("files/r/raw", 1000, 300) == data[1000:1300]
    assert storage.read_range("files/r/raw", len(data) - 5, 100) == data[-5:]  # clipped at the end


def test_too_large_leaves_nothing_behind(storage):
    with pytest.raises(TooLarge):
        storage.put_stream("files/x/raw", Generated(PART + 10), max_bytes=PART + 5)
    assert not storage.exists("files/x/raw")
    if isinstance(storage, S3Storage):  # the multipart upload was aborted, not left to accumulate
        assert not storage.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads")


def _folder(root: Path, n: int, tag: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"part-{i:02d}.bin").write_text(f"{tag}:{i}\n" * 200)
    (root / "adapter").mkdir(exist_ok=True)
    (root / "adapter" / "config.json").write_text(f'{{"tag": "{tag}"}}')
    return root


def _slow(storage):
    """The same store with a slow link: each file of a folder takes 20 ms to publish."""
    if isinstance(storage, S3Storage):
        orig = storage._upload_file
        storage._upload_file = lambda p, o: (time.sleep(0.02), orig(p, o))
    else:
        orig = storage._copy_file
        storage._copy_file = lambda s, d: (time.sleep(0.02), orig(s, d))


def test_a_reader_never_sees_a_partially_published_folder(storage, tmp_path):
    n = 25
    old = _folder(tmp_path / "old", n, "old")
    new = _folder(tmp_path / "new", n, "new")
    storage.put_dir("jobs/j/checkpoints/checkpoint-4", old)
    _slow(storage)
    done = threading.Event()
    seen: list[str] = []

    def publish():
        try:
            storage.put_dir("jobs/j/checkpoints/checkpoint-4", new)
        finally:
            done.set()

    t = threading.Thread(target=publish)
    t.start()
    while not done.is_set():
        assert storage.exists("jobs/j/checkpoints/checkpoint-4")
        with storage.local_path("jobs/j/checkpoints/checkpoint-4") as p:
            files = sorted(q.name for q in p.glob("part-*.bin"))
            tags = {q.read_text().split(":")[0] for q in p.glob("part-*.bin")}
        assert len(files) == n and len(tags) == 1, (len(files), tags)  # all old or all new, never a mix
        seen.append(tags.pop())
        time.sleep(0.01)
    t.join()
    assert "old" in seen  # the reader did look while the publish was under way
    with storage.local_path("jobs/j/checkpoints/checkpoint-4") as p:
        assert (p / "part-00.bin").read_text().startswith("new:")
        assert (p / "adapter" / "config.json").read_text() == '{"tag": "new"}'


def test_a_new_folder_exists_only_once_published(storage, tmp_path):
    src = _folder(tmp_path / "f", 20, "v1")
    _slow(storage)
    done = threading.Event()
    t = threading.Thread(target=lambda: (storage.put_dir("models/base/m", src), done.set()))
    t.start()
    looked = 0
    while not done.is_set():
        if storage.exists("models/base/m"):
            with storage.local_path("models/base/m") as p:
                assert len(list(p.glob("part-*.bin"))) == 20
        else:
            looked += 1
            try:  # not published when exists() looked: not readable, or (published since) complete
                with storage.local_path("models/base/m") as p:
                    assert len(list(p.glob("part-*.bin"))) == 20
            except FileNotFoundError:
                pass
        time.sleep(0.01)
    t.join()
    assert looked > 0
    assert storage.exists("models/base/m")


def test_paths_inside_a_folder_and_listing(storage, tmp_path):
    storage.put_dir("jobs/j/checkpoints/checkpoint-8", _folder(tmp_path / "a", 2, "a"))
    storage.put_dir("jobs/j/checkpoints/checkpoint-12", _folder(tmp_path / "b", 2, "b"))
    assert storage.exists("jobs/j/checkpoints/checkpoint-8/adapter")
    assert storage.exists("jobs/j/checkpoints/checkpoint-8/adapter/config.json")
    assert not storage.exists("jobs/j/checkpoints/checkpoint-8/nothing")
    assert not storage.exists("jobs/j/checkpoints/checkpoint-9")
    with storage.local_path("jobs/j/checkpoints/checkpoint-12/adapter") as p:
        assert (p / "config.json").read_text() == '{"tag": "b"}'
    assert storage.list_folders("jobs/j/checkpoints") == ["checkpoint-12", "checkpoint-8"]
    assert storage.list_folders("jobs/none") == []
    assert storage.size("jobs/j/checkpoints/checkpoint-8/adapter/config.json") == len('{"tag": "a"}')


def test_location_names_the_stored_folder_without_fetching_it(s3_env, tmp_path):
    writer = _s3(s3_env, tmp_path / "w", "where")
    writer.put_dir("models/base/m", _folder(tmp_path / "m", 2, "m"))
    reader = _s3(s3_env, tmp_path / "r", "where")
    assert reader.location("models/base/m") == f"s3://{reader.bucket}/{reader._obj('models/base/m')}"
    assert reader.cached_bytes() == 0  # nothing was downloaded to say where it is
    local = LocalStorage(tmp_path / "plain")
    assert local.location("models/base/m") == str(tmp_path.resolve() / "plain" / "models" / "base" / "m")


def test_delete(storage, tmp_path):
    storage.put_stream("files/d/raw", _bytes(b"abc"))
    storage.put_stream("files/d/canonical", _bytes(b"def"))
    storage.put_dir("jobs/d/model", _folder(tmp_path / "m", 3, "m"))
    storage.delete("files/d")  # a prefix: everything under it
    assert not storage.exists("files/d/raw") and not storage.exists("files/d/canonical")
    storage.delete("jobs/d/model")
    assert not storage.exists("jobs/d/model")
    assert storage.list_folders("jobs/d") == []
    with pytest.raises(FileNotFoundError), storage.local_path("jobs/d/model"):
        pass
    storage.delete("never/there")  # deleting nothing is fine
    if isinstance(storage, S3Storage):  # no object of the folder is left in the bucket
        left = storage.client.list_objects_v2(Bucket=storage.bucket, Prefix=storage._obj("jobs/d"))
        assert not left.get("Contents")


def test_scratch_folder_is_published_with_put_dir(storage):
    out = storage.writable_dir("jobs/w")
    _folder(out / "model", 2, "w")
    storage.put_dir("jobs/w/model", out / "model")
    with storage.local_path("jobs/w/model") as p:
        assert (p / "adapter" / "config.json").read_text() == '{"tag": "w"}'


def test_restore_newest_checkpoint_on_a_fresh_host(s3_env, tmp_path):
    a = _s3(s3_env, tmp_path / "host-a", "restore")
    for step in (4, 8, 12):
        a.put_dir(f"jobs/j/checkpoints/checkpoint-{step}", _folder(tmp_path / f"c{step}", 2, f"s{step}"))
    b = _s3(s3_env, tmp_path / "host-b", "restore")  # shares nothing with host a but the store
    local = b.writable_dir("jobs/j") / "checkpoints"
    local.mkdir()
    assert restore_newest_folder(b, "jobs/j/checkpoints", local) == "checkpoint-12"
    assert [p.name for p in local.iterdir()] == ["checkpoint-12"]
    assert (local / "checkpoint-12" / "adapter" / "config.json").read_text() == '{"tag": "s12"}'
    assert restore_newest_folder(LocalStorage(tmp_path / "plain"), "jobs/j/checkpoints", local) is None


def test_read_through_cache_is_bounded_and_evicts_least_recently_used(s3_env, tmp_path):
    one = 2 * 200 * len("x:0\n")  # about the size of each folder below
    writer = _s3(s3_env, tmp_path / "w", "lru")
    for name in "abcd":
        writer.put_dir(f"models/{name}", _folder(tmp_path / name, 2, name))
    reader = _s3(s3_env, tmp_path / "r", "lru", cache_bytes=3 * one + 100)

    def use(name):
        with reader.local_path(f"models/{name}") as p:
            return p

    pa, pb, pc = use("a"), use("b"), use("c")
    assert pa.exists() and pb.exists() and pc.exists()
    time.sleep(0.05)
    assert use("a") == pa  # a second use is served from the cache, and makes "a" the most recent
    time.sleep(0.05)
    pd = use("d")  # over the bound: the least recently used ("b") goes
    assert pa.exists() and pc.exists() and pd.exists()
    assert not pb.exists()
    assert reader.cached_bytes() <= reader.cache_bytes
    assert use("b").exists()  # fetched again on demand


def test_cache_follows_a_republished_folder(s3_env, tmp_path):
    w = _s3(s3_env, tmp_path / "w", "refresh")
    r = _s3(s3_env, tmp_path / "r", "refresh")
    w.put_dir("jobs/j/model", _folder(tmp_path / "v1", 1, "v1"))
    with r.local_path("jobs/j/model") as p:
        assert (p / "adapter" / "config.json").read_text() == '{"tag": "v1"}'
    w.put_dir("jobs/j/model", _folder(tmp_path / "v2", 1, "v2"))
    with r.local_path("jobs/j/model") as p:
        assert (p / "adapter" / "config.json").read_text() == '{"tag": "v2"}'
    objs = w.client.list_objects_v2(Bucket=w.bucket, Prefix=w._obj("jobs/j/model"))["Contents"]
    assert len({o["Key"].split("/.v-")[1].split("/")[0] for o in objs if "/.v-" in o["Key"]}) == 1  # old gone


def test_the_storage_url_setting_selects_the_backend(s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("CHATFORGE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CHATFORGE_STORAGE_URL", raising=False)
    reset_settings()
    try:
        assert isinstance(get_storage(), LocalStorage)
        monkeypatch.setenv("CHATFORGE_STORAGE_URL", "s3://chatforge-test/sel")
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env["AWS_ENDPOINT_URL"])
        reset_settings()
        s = get_storage()
        assert isinstance(s, S3Storage) and (s.bucket, s.prefix) == ("chatforge-test", "sel")
        s.put_stream("files/f/raw", _bytes(b"hello"))
        raw = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"]).get_object(
            Bucket="chatforge-test", Key="sel/files/f/raw")
        assert raw["Body"].read() == b"hello"
        assert s.cache_dir == tmp_path.resolve() / "cache"
    finally:
        reset_settings()


def _bytes(b: bytes):
    import io

    return io.BytesIO(b)


def test_the_size_of_a_folder_is_the_bytes_of_its_files(storage, tmp_path):
    src = _folder(tmp_path / "f", 3, "x")
    expected = sum(f.stat().st_size for f in src.rglob("*") if f.is_file())
    storage.put_dir("jobs/s/model", src)
    assert storage.size("jobs/s/model") == expected
    storage.put_dir("jobs/s/model", _folder(tmp_path / "g", 5, "y"))  # a republish counts the new version only
    assert storage.size("jobs/s/model") == expected + sum(
        f.stat().st_size for f in (tmp_path / "g").glob("part-0[34].bin"))
