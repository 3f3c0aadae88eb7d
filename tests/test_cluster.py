"""Scale-out on Ray: one local cluster of 2 workers (the same archive bytes as one process, a
worker killed mid-run), the CLI's own local cluster interrupted, a cluster started with
`ray start --head` joined, and one-line errors for clusters that cannot be used."""

import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmzip import Compressor, container
from llmzip.cli import main
from llmzip.cli.files import JOURNAL_SUFFIX
from llmzip.cluster import JOIN_ATTEMPTS, Cluster, _join
from llmzip.errors import ClusterError, InvalidOptionError

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

GOLDEN = Path(__file__).parent / "golden"

TEXT = (GOLDEN / "alice1200.txt").read_bytes() * 5
OPTIONS = {"chunk_size": 512, "window": 64, "batch_size": 2}  # batches of 2 chunks, side models on


@pytest.fixture(scope="module")
def single(tiny_dir):
    """The archive coded in this process, without Ray."""
    return Compressor(tiny_dir, **OPTIONS).compress(TEXT)


class TestOneLocalCluster:
    """Tests on one local cluster of 2 workers (starting one takes seconds), stopped after them."""

    @pytest.fixture(scope="class")
    def cluster(self):
        with Cluster(2) as cluster:
            yield cluster

    def test_workers_code_the_same_bytes_as_one_process(self, tiny_dir, single, cluster):
        compressor = Compressor(tiny_dir, cluster=cluster, **OPTIONS)
        ticks = []
        assert compressor.compress(TEXT, ticks.append) == single
        assert sum(ticks) == len(TEXT)  # the progress bar ends full
        assert compressor.decompress(single) == TEXT
        assert len(cluster.figures) == 2 and cluster.retries == 0
        chunks = len(container.unpack(single)[0].chunks)
        assert chunks > 4 and sum(w.batches for w in cluster.figures.values()) == 2 * -(-chunks // 2)

    def test_a_killed_worker_is_restarted_and_its_batch_retried(self, tiny_dir, single, cluster):
        compressor = Compressor(tiny_dir, cluster=cluster, batch_size=OPTIONS["batch_size"])
        killed, retries = [], cluster.retries

        def kill_one(_: int) -> None:  # called while batches are in flight
            if not killed:
                pid = int(next(iter(cluster.figures)).rpartition(":")[2])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        assert compressor.decompress(single, kill_one) == TEXT
        assert killed and cluster.retries > retries
        assert f"{os.uname().nodename}:{killed[0]}" in cluster.figures  # its figures up to the kill

    def test_a_journal_kept_here_resumes_on_the_workers(self, tiny_dir, single, cluster, tmp_path):
        journal = str(tmp_path / "a.lz.llmzip-journal")
        coded = []

        def stop_midway(n: int) -> None:
            coded.append(n)
            if sum(coded) > len(TEXT) // 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            Compressor(tiny_dir, **OPTIONS).compress_stream(io.BytesIO(TEXT), stop_midway, journal=journal)
        before = sum(w.batches for w in cluster.figures.values())
        archive = Compressor(tiny_dir, cluster=cluster, **OPTIONS).compress_stream(io.BytesIO(TEXT), journal=journal)
        assert b"".join(archive.blocks()) == single
        batches = -(-len(container.unpack(single)[0].chunks) // OPTIONS["batch_size"])
        assert 0 < sum(w.batches for w in cluster.figures.values()) - before < batches

    def test_workers_need_the_exact_predictor(self, tiny_dir, cluster):
        with pytest.raises(InvalidOptionError, match="workers need the exact predictor"):
            Compressor(tiny_dir, cluster=cluster, precision="fp32")


def _ray_processes() -> dict[int, str]:
    """This machine's Ray processes (workers name themselves ray::...), by pid."""
    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if text.startswith("ray::") or "raylet" in text or "gcs_server" in text:
            found[int(cmdline.parent.name)] = text
    return found


def _wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_ctrl_c_stops_the_workers_and_leaves_only_the_journal(tiny_dir, single, tmp_path):
    archive, out = tmp_path / "a.lz", tmp_path / "a"
    archive.write_bytes(single)
    before = set(_ray_processes())  # other tests' clusters may still be winding down

    def new() -> dict[int, str]:
        return {pid: text for pid, text in _ray_processes().items() if pid not in before}

    cmd = [sys.executable, "-m", "llmzip", "-d", str(archive), "-o", str(out), "--workers", "1", "-q"]
    # Ctrl-C as in a terminal, even where this run ignores SIGINT (a job started in the
    # background with &): Python installs its handler only for a signal not ignored at start.
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    process = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, preexec_fn=restore)
    decoding = _wait_until(lambda: any(t.startswith("ray::Worker.decode") for t in new().values()), 120)
    assert decoding and process.poll() is None, "no worker started decoding"
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 130 and process.stderr.read().strip().splitlines()[-1] == "llmzip: interrupted"
    assert set(os.listdir(tmp_path)) - {f"a{JOURNAL_SUFFIX}"} == {"a.lz"}  # the journal: batches finished
    assert _wait_until(lambda: not new(), 30), new()  # the raylet takes its workers down


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture
def head():
    """A cluster started the way users start one, `ray start --head`, with token authentication
    (which Ray is turning on by default): its GCS port, client port and its users' env."""
    gcs, client = _free_port(), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    ray = Path(sys.executable).with_name("ray")
    options = [f"--port={gcs}", f"--ray-client-server-port={client}", "--num-cpus=2", "--include-dashboard=false"]
    process = subprocess.Popen([ray, "start", "--head", "--block", *options], env=env, stdout=subprocess.DEVNULL)
    assert _wait_until(lambda: _answers(gcs) and _answers(client), 120), "ray start --head did not come up"
    yield gcs, client, env
    process.terminate()  # --block: it stops the cluster's processes on the way out
    process.wait(60)


def test_joining_a_cluster_started_with_ray_start(tiny_dir, single, head, tmp_path, monkeypatch):
    gcs, client, env = head
    archive, out = tmp_path / "a.lz", tmp_path / "a"
    archive.write_bytes(single)
    sample = tmp_path / "sample.txt"
    sample.write_bytes(TEXT)
    options = ["--model", tiny_dir, "--chunk-size", "512", "--window", "64", "--batch-size", "2", "-q"]
    options += ["--workers", "1"]  # of the cluster's 2 CPUs: one worker process to start, not two

    def llmzip(*args: str) -> int:  # in its own process, as Ray's connection settings are per process
        return subprocess.run([sys.executable, "-m", "llmzip", *args], env=env).returncode

    assert llmzip("compress", str(sample), *options, "--ray", f"127.0.0.1:{gcs}") == 0
    assert (tmp_path / "sample.txt.lz").read_bytes() == single
    assert llmzip("-d", str(archive), "-o", str(out), "--ray", f"ray://127.0.0.1:{client}", "--workers", "1", "-q") == 0
    assert out.read_bytes() == TEXT

    for address, token, error in [  # these fail before Ray connects, so they run in this process
        (f"127.0.0.1:{gcs}", None, f"the Ray cluster at 127.0.0.1:{gcs} asks for a token: set RAY_AUTH_MODE=token"),
        (f"ray://127.0.0.1:{client}", "0" * 32, f"the Ray cluster at ray://127.0.0.1:{client} refused this"),
        (f"127.0.0.1:{client}", env["RAY_AUTH_TOKEN"], f"127.0.0.1:{client} answers, but is not a Ray GCS"),
        (f"ray://127.0.0.1:{gcs}", env["RAY_AUTH_TOKEN"], f"127.0.0.1:{gcs} answers, but is not a Ray client server"),
    ]:
        monkeypatch.setenv("RAY_AUTH_MODE", "token" if token else "disabled")
        monkeypatch.setenv("RAY_AUTH_TOKEN", token or "")
        result = CliRunner().invoke(main, ["-d", str(archive), "-o", str(tmp_path / "b"), "--ray", address])
        assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
        assert result.stderr.startswith(f"llmzip: error: {error}"), result.stderr
    assert sorted(os.listdir(tmp_path)) == ["a", "a.lz", "sample.txt", "sample.txt.lz"]


def test_joining_retries_where_the_client_servers_process_died():
    """Ray's client server may lose the process it forks for a client (ray-project/ray#63202):
    joining tries again, JOIN_ATTEMPTS times in all; other failures are reported at once."""

    class Ray:
        def __init__(self, errors: list[Exception]) -> None:
            self.errors, self.inits, self.shutdowns = errors, 0, 0

        def init(self, address: str, **options: object) -> None:
            self.inits += 1
            if self.errors:
                raise self.errors.pop(0)

        def shutdown(self) -> None:
            self.shutdowns += 1

    died = ConnectionAbortedError("Initialization failure from server:\n")
    ray = Ray([died, died])
    _join(ray, "ray://h:1", {})
    assert (ray.inits, ray.shutdowns) == (3, 2)
    ray = Ray([died] * JOIN_ATTEMPTS)
    with pytest.raises(ClusterError, match=r"^cannot join the Ray cluster at ray://h:1: Initialization failure"):
        _join(ray, "ray://h:1", {})
    assert ray.inits == JOIN_ATTEMPTS
    ray = Ray([ConnectionError("refused")])
    with pytest.raises(ClusterError, match="refused"):
        _join(ray, "ray://h:1", {})
    assert ray.inits == 1


def test_a_cluster_nobody_answers_at_is_a_one_line_error(tiny_dir, tmp_path):
    sample = tmp_path / "sample.txt"
    sample.write_bytes(TEXT)
    for address in ("127.0.0.1:1", "ray://127.0.0.1:1"):
        result = CliRunner().invoke(main, ["compress", str(sample), "--model", tiny_dir, "--ray", address])
        assert result.exit_code == 1
        assert result.stderr.strip().splitlines() == [
            f"llmzip: error: cannot reach the Ray cluster at {address}: Connection refused"
        ]
    assert not (tmp_path / "sample.txt.lz").exists()


def test_without_ray_installed(tiny_dir, tmp_path):
    """One process needs no Ray (and does not import it); workers say how to get it."""
    sample = tmp_path / "sample.txt"
    sample.write_bytes(TEXT[:500])
    script = (
        "import sys; sys.modules['ray'] = None\n"
        "from llmzip.cli import main\n"
        "try: main(sys.argv[1:])\n"
        "finally: print('ray imported' if sys.modules['ray'] is not None else 'no ray', file=sys.stderr)\n"
    )
    cmd = [sys.executable, "-c", script, "compress", str(sample), "--model", tiny_dir, "-q"]
    plain = subprocess.run(cmd, capture_output=True, text=True)
    assert plain.returncode == 0 and plain.stderr == "no ray\n"
    workers = subprocess.run([*cmd, "-f", "--workers", "2"], capture_output=True, text=True)
    assert workers.returncode == 1
    assert workers.stderr == "llmzip: error: workers need Ray: pip install 'llmzip[ray]'\nno ray\n"
