"""The SQLite job store: records, filters, the atomic claim, dismissal, graceful release and the
recovery of jobs left running by a dead runner."""

from __future__ import annotations

import multiprocessing
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cropstar.errors import InputError
from service.jobs.store import RESUMED, SCHEMA_VERSION, JobStore, new_owner, owner_is_dead

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite")


def dead_owner() -> str:
    """The owner token of a runner whose process has exited."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return f"{socket.gethostname()}:{int(child.stdout)}:deadbeef"


def test_a_new_job_is_accepted_and_reads_back(store: JobStore) -> None:
    job = store.create("classify-raster", {"data_source": "demo", "block_size": 64})
    assert job.status == "accepted" and job.progress == 0 and job.attempts == 0
    assert len(job.id) == 36 and ISO_UTC.match(job.created) and job.updated == job.created
    assert job.started is None and job.finished is None and job.outputs is None
    assert store.get(job.id) == job
    assert store.get("no-such-id") is None


def test_the_schema_version_is_recorded_and_jobs_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    job = JobStore(path).create("retrain", {"dataset": "crops"})
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert JobStore(path).get(job.id) == job


def test_a_newer_schema_or_another_file_is_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer.sqlite"
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(
        InputError, match=r"newer.sqlite has schema version 99; this cropstar reads version 1"
    ):
        JobStore(newer)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(InputError, match="cannot open the job store .*junk.sqlite"):
        JobStore(junk)


def test_list_filters_newest_first(store: JobStore) -> None:
    made = [store.create(p, {"n": i}) for i, p in enumerate(["retrain", "classify-raster"] * 3)]
    assert [j.id for j in store.list()] == [j.id for j in reversed(made)]
    assert [j.inputs["n"] for j in store.list(process="retrain")] == [4, 2, 0]
    assert [j.inputs["n"] for j in store.list(limit=2, offset=1)] == [4, 3]
    store.dismiss(made[0].id)
    assert [j.id for j in store.list(status=["dismissed"])] == [made[0].id]
    assert len(store.list(status=("accepted", "running"), process=["classify-raster", "retrain"])) == 5
    assert store.list(process=[]) == [] and store.count() == 6 and store.count(status="accepted") == 5


def test_a_job_runs_to_success_with_its_outputs(store: JobStore) -> None:
    job = store.create("classify-raster", {})
    owner = new_owner()
    claimed = store.claim_next(owner)
    assert claimed is not None and claimed.id == job.id
    assert claimed.status == "running" and claimed.attempts == 1 and claimed.owner == owner
    assert ISO_UTC.match(claimed.started or "")
    assert store.claim_next(owner) is None  # nothing else waits
    assert store.update_progress(job.id, owner, 40, "8 of 20 blocks")
    assert not store.update_progress(job.id, "someone-else", 50)  # only the owner writes
    assert store.get(job.id).progress == 40 and store.get(job.id).message == "8 of 20 blocks"
    assert not store.finish(job.id, "someone-else", "successful", outputs={})
    assert store.finish(job.id, owner, "successful", outputs={"map": {"file": "map.tif"}})
    done = store.get(job.id)
    assert (
        done.status == "successful" and done.progress == 100 and done.outputs == {"map": {"file": "map.tif"}}
    )
    assert done.finished is not None and done.owner is None
    assert not store.finish(job.id, owner, "failed", message="too late")  # finished jobs stay finished


def test_a_failed_job_keeps_its_message_and_progress(store: JobStore) -> None:
    job = store.create("retrain", {})
    owner = new_owner()
    store.claim_next(owner)
    store.update_progress(job.id, owner, 30)
    assert store.finish(job.id, owner, "failed", message="dataset 'crops' has no training samples")
    failed = store.get(job.id)
    assert (failed.status, failed.progress, failed.message) == (
        "failed", 30, "dataset 'crops' has no training samples"
    )  # fmt: skip
    with pytest.raises(ValueError, match="not 'dismissed'"):
        store.finish(job.id, owner, "dismissed")


def test_claims_come_oldest_first_and_by_process(store: JobStore) -> None:
    first, second = store.create("retrain", {}), store.create("classify-raster", {})
    owner = new_owner()
    assert store.claim_next(owner, processes=["classify-raster"]).id == second.id
    assert store.claim_next(owner, processes=[]) is None
    assert store.claim_next(owner).id == first.id


def _claim_all(path: Path, into: list[str], start: threading.Barrier) -> None:
    store, owner = JobStore(path), new_owner()  # its own connection, as another process would have
    start.wait()
    while (job := store.claim_next(owner)) is not None:
        into.append(job.id)
    store.close()


def test_concurrent_claims_never_share_a_job(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    store = JobStore(path)
    made = {store.create("classify-raster", {"n": i}).id for i in range(60)}
    claimed: list[str] = []
    start = threading.Barrier(6)
    threads = [threading.Thread(target=_claim_all, args=(path, claimed, start)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(made)  # every job once, none twice
    assert {job.attempts for job in store.list()} == {1}


def _claim_in_process(path: str, queue: multiprocessing.Queue) -> None:
    store, owner = JobStore(path), new_owner()
    ids = []
    while (job := store.claim_next(owner)) is not None:
        ids.append(job.id)
    queue.put(ids)


def test_concurrent_claims_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    store = JobStore(path)
    made = {store.create("retrain", {}).id for _ in range(40)}
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_claim_in_process, args=(str(path), queue)) for _ in range(2)]
    for process in processes:
        process.start()
    claimed = [job_id for _ in processes for job_id in queue.get(timeout=60)]
    for process in processes:
        process.join(60)
    assert sorted(claimed) == sorted(made)


def test_dismissal_stops_writes_of_the_runner_and_drops_outputs(store: JobStore) -> None:
    queued, running, done = (store.create("classify-raster", {}) for _ in range(3))
    owner = new_owner()
    store.claim_next(owner)  # queued → running
    store.claim_next(owner)
    store.claim_next(owner)
    store.finish(done.id, owner, "successful", outputs={"map": {"file": "map.tif"}})
    store.release(queued.id, owner, "stop")  # back to accepted
    for job, before in ((queued, "accepted"), (running, "running"), (done, "successful")):
        dismissed, previous = store.dismiss(job.id)
        assert previous == before and dismissed.status == "dismissed" and dismissed.outputs is None
        assert dismissed.finished is not None
    assert not store.update_progress(running.id, owner, 60)  # the runner learns it must stop
    assert not store.finish(running.id, owner, "successful", outputs={})
    assert store.get(running.id).status == "dismissed"
    assert store.dismiss(running.id)[1] == "dismissed"  # again: no change
    assert store.dismiss("no-such-id") is None
    assert store.claim_next(owner) is None  # a dismissed queued job never runs


def test_release_hands_the_job_back_with_its_start(store: JobStore) -> None:
    job = store.create("retrain", {})
    owner = new_owner()
    store.claim_next(owner)
    assert not store.release(job.id, "someone-else", "stop")
    assert store.release(job.id, owner, "service stopping")
    back = store.get(job.id)
    assert (back.status, back.attempts, back.message, back.owner) == ("accepted", 0, "service stopping", None)
    assert store.claim_next(owner).attempts == 1


def test_owner_liveness() -> None:
    assert not owner_is_dead(new_owner())  # this process
    assert owner_is_dead(dead_owner())
    assert not owner_is_dead("another-host:1:abc")  # unknown: the heartbeat decides
    assert owner_is_dead(None)


def test_recover_resumes_the_jobs_of_a_dead_runner(store: JobStore) -> None:
    crashed, alive, far = (store.create("classify-raster", {"n": i}) for i in range(3))
    store.claim_next(dead_owner())
    store.claim_next(new_owner())
    store.claim_next("another-host:4242:abc")  # a live heartbeat on another host
    recovered = store.recover(stale_after=60)
    assert [job.id for job in recovered] == [crashed.id]
    resumed = store.get(crashed.id)
    assert (resumed.status, resumed.message, resumed.attempts) == ("accepted", RESUMED, 1)
    assert store.get(alive.id).status == "running" and store.get(far.id).status == "running"
    # a stale heartbeat (the runner on another host stopped beating) is recovered too
    assert [job.id for job in store.recover(stale_after=-1) if job.id == far.id] == [far.id]
    again = store.claim_next(new_owner())
    assert again.id == crashed.id and again.attempts == 2 and again.message == "resumed (start 2)"


def test_recover_gives_up_after_max_attempts(store: JobStore) -> None:
    job = store.create("retrain", {})
    for _ in range(3):
        store.claim_next(dead_owner())
        store.recover(max_attempts=3)
    failed = store.get(job.id)
    assert failed.status == "failed" and failed.attempts == 3
    assert failed.message == "interrupted 3 times (by restarts or crashes); given up"


def test_heartbeats_keep_the_named_jobs_alive(store: JobStore) -> None:
    beating, silent = store.create("retrain", {}), store.create("retrain", {})
    owner = "another-host:4242:abc"
    store.claim_next(owner)
    store.claim_next(owner)
    time.sleep(0.3)
    assert store.heartbeat(owner, [beating.id]) == 1 and store.heartbeat(owner, []) == 0
    assert [job.id for job in store.recover(stale_after=0.2)] == [silent.id]
    assert store.get(beating.id).status == "running"
