"""A class of several members (training.members, model.bundle.ClassModel.members): networks
trained from their own seeds, each calibrated on its own, a window scored by the members' median
score in their own thresholds. What it must keep: each member scores as it would alone (its
own columns of the carried state), the explanation is one member's in real units, the bundle
round trip, the twins' scores combined alike, malformed members refused, and a model of one
member is the model it always was."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.errors import ModelError
from detector.eval.baselines import stateless_scores
from detector.model.bundle import META, ClassModel, ModelBundle
from detector.model.scorer import StreamingScorer
from detector.model.training import TrainingParams, member_seed, train
from tests.conftest import can_unshare_mounts
from tests.hostile._hostile import _edit, _set
from tests.model.test_scorer import _bundle, _sequence, _windows

THRESHOLDS = (5.0, 7.0, 9.0)


def _members(hidden: int = 16, one_map: bool = False) -> tuple[ModelBundle, list[ModelBundle]]:
    """A bundle of three members, and each member as a bundle of its own. one_map: the
    members' scalers map features alike, as those trained on the same windows do, each with
    its own error scales."""
    alone = []
    for i, t in enumerate(THRESHOLDS):
        b = _bundle(seed=10 + i, hidden=hidden)
        for cls, cm in b.classes.items():
            cm.threshold.value = t
            if one_map:
                cm.scaler = copy.deepcopy(alone[0].classes[cls].scaler) if alone else cm.scaler
                cm.scaler.error_scale = np.linspace(1.0, 2.0 + i, cm.scaler.center.shape[0]).astype(np.float32)
        alone.append(b)
    classes = {}
    for cls in alone[0].classes:
        own = [copy.deepcopy(b.classes[cls]) for b in alone]
        th = copy.deepcopy(own[0].threshold)
        th.value = float(np.mean(THRESHOLDS))
        classes[cls] = ClassModel(own[0].network, own[0].scaler, th, members=own)
    first = alone[0]
    return ModelBundle(first.schema, first.bin_s, first.bins, hidden, classes, members=3), alone


@pytest.mark.parametrize("one_map", [False, True], ids=["own maps", "one map"])
def test_a_window_scores_the_members_median_score_in_their_own_thresholds_and_each_member_carries_its_own_state(one_map: bool):
    together, alone = _members(one_map=one_map)
    seq = _sequence(6, 3)
    entities = ["global", "10.0.0.1", "10.0.0.2"]
    scorer = StreamingScorer(together, device="cpu", warmup_windows=0)
    singles = [StreamingScorer(b, device="cpu", warmup_windows=0) for b in alone]
    for k in range(6):
        out = scorer.score(_windows(k, entities, seq[k]))
        each = [s.score(_windows(k, entities, seq[k])) for s in singles]
        shares = np.array([e.scores / t for e, t in zip(each, THRESHOLDS, strict=True)])
        np.testing.assert_allclose(out.scores, np.median(shares, axis=0) * np.mean(THRESHOLDS), rtol=1e-5)
        judge = np.argsort(shares, axis=0)[1]
        for row, j in enumerate(judge):  # the explanation: the median member's, in real units
            np.testing.assert_array_equal(out.top_index[row], each[j].top_index[row])
            np.testing.assert_allclose(out.top_expected[row], each[j].top_expected[row], rtol=1e-6)
            np.testing.assert_allclose(out.deviation_observed[row], each[j].deviation_observed[row], rtol=1e-6)
    held = scorer.state_dict()["host"]
    assert held["h"].shape == (2, 3 * 16)  # every member's state side by side
    for i, single in enumerate(singles):
        torch.testing.assert_close(held["h"][:, i * 16 : (i + 1) * 16], single.state_dict()["host"]["h"])
        torch.testing.assert_close(held["c"][:, i * 16 : (i + 1) * 16], single.state_dict()["host"]["c"])


def test_one_member_whose_threshold_failed_does_not_decide_the_score():
    """A member calibrated 100 times too low (section xxx: the screen cut a benign mode and
    left a threshold 4.8 times under it) scores every window far over its threshold; the
    median of three stays between the other two members' readings."""
    together, alone = _members()
    for cm in together.classes.values():
        cm.members[2].threshold.value = THRESHOLDS[2] / 100
    seq = _sequence(3, 1)
    scorer = StreamingScorer(together, device="cpu", warmup_windows=0)
    singles = [StreamingScorer(b, device="cpu", warmup_windows=0) for b in alone[:2]]
    unit = together.classes["global"].members_threshold()
    for k in range(3):
        out = scorer.score(_windows(k, ["global"], seq[k])).scores[0]
        sane = [s.score(_windows(k, ["global"], seq[k])).scores[0] / t * unit for s, t in zip(singles, THRESHOLDS, strict=False)]
        assert min(sane) * (1 - 1e-5) <= out <= max(sane) * (1 + 1e-5)


def test_a_class_of_members_alarms_where_its_combined_score_passes_its_threshold():
    together, _ = _members()
    seq = _sequence(4, 2)
    scorer = StreamingScorer(together, device="cpu", warmup_windows=0)
    scores = [scorer.score(_windows(k, ["global", "10.0.0.1"], seq[k])).scores for k in range(4)]
    for cm in together.classes.values():  # a threshold under every score: every window alarms
        cm.threshold.value = float(np.min(scores)) / 2
    out = scorer.score(_windows(4, ["global", "10.0.0.1"], seq[0]))
    assert out.anomalous.all()
    assert (out.thresholds == np.float32(together.classes["host"].threshold.value)).all()


def test_a_threshold_refit_moves_the_threshold_not_the_scores():
    together, _ = _members()
    seq = _sequence(3, 1)
    a = StreamingScorer(together, device="cpu", warmup_windows=0)
    b = StreamingScorer(copy.deepcopy(together), device="cpu", warmup_windows=0)
    b.bundle.classes["global"].threshold.value *= 3  # as refresh_thresholds would
    for k in range(3):
        np.testing.assert_array_equal(a.score(_windows(k, ["global"], seq[k])).scores,
                                      b.score(_windows(k, ["global"], seq[k])).scores)


def test_a_bundle_of_members_round_trips_and_the_twins_combine_alike(tmp_path: Path):
    together, alone = _members()
    path = together.save(tmp_path / "model")
    meta = json.loads((path / META).read_text())
    assert 3 == meta["members"] and [5.0, 7.0, 9.0] == [m["threshold"]["value"] for m in meta["classes"]["host"]["members"]]
    back = ModelBundle.load(path, classes=("global", "host"))
    assert 3 == back.members and 48 == back.state_size
    seq = _sequence(4, 2)
    s1, s2 = StreamingScorer(together, device="cpu"), StreamingScorer(back, device="cpu")
    for k in range(4):
        w = _windows(k, ["global", "10.0.0.1"], seq[k])
        np.testing.assert_array_equal(s1.score(w).scores, s2.score(w).scores)
    starts = np.full(2, 1_700_000_000_000_000_000, dtype=np.int64)
    each = [stateless_scores(b.classes["host"], seq[0], starts) for b in alone]
    np.testing.assert_allclose(stateless_scores(back.classes["host"], seq[0], starts),
                               np.median([e / t for e, t in zip(each, THRESHOLDS, strict=True)], axis=0) * np.mean(THRESHOLDS),
                               rtol=1e-5)


def _drop_member_weights(bundle: Path) -> None:
    """The second member's weights gone, both hashes made to match (as an editor would)."""
    from safetensors.torch import load_file, save_file

    from detector.model.bundle import WEIGHTS
    from detector.model.meta import sha256_of
    from tests.hostile._hostile import _meta, _write_meta

    tensors = {k: v for k, v in load_file(str(bundle / WEIGHTS)).items() if not k.startswith("host#1.")}
    save_file(tensors, str(bundle / WEIGHTS))
    meta = _meta(bundle)
    meta["weights_sha256"] = sha256_of(bundle / WEIGHTS)
    _write_meta(bundle, meta, rehash=True)


@pytest.mark.parametrize(("damage", "reason"), [
    (_edit(_set("members", 2)), "classes.global.members: needs a list of 2"),
    (_edit(_set("members", 99)), "members: 99"),
    (_edit(lambda m: m["classes"]["host"].pop("members")), "classes.host.members: needs a list of 3"),
    (_edit(_set("classes.host.members", {"a": 1})), "classes.host.members: needs a list of 3"),
    (_edit(lambda m: m["classes"]["host"]["members"][2]["threshold"].update(value=float("nan"))),
     "classes.host.members[2].threshold.value: nan"),
    (_edit(lambda m: m["classes"]["host"]["members"][1].pop("scaler")), "classes.host.members[1].scaler: missing"),
    (_drop_member_weights, "class host member 1: the weights do not fit"),
], ids=["count another", "count huge", "members missing", "members not a list", "member threshold NaN",
        "member scaler missing", "member weights missing"])
def test_a_malformed_member_is_refused_with_the_file_and_the_reason(tmp_path: Path, damage, reason: str):
    path = _members()[0].save(tmp_path / "model")
    damage(path)
    with pytest.raises(ModelError, match="invalid bundle|weights") as refused:
        ModelBundle.load(path, classes=("global", "host"))
    assert reason in str(refused.value)


def test_members_in_a_bundle_of_one_are_refused(tmp_path: Path):
    path = _bundle().save(tmp_path / "model")
    _edit(_set("classes.host.members", []))(path)
    with pytest.raises(ModelError, match="classes.host.members: present, but the bundle's `members` is 1"):
        ModelBundle.load(path)


@pytest.fixture(scope="module")
def trained() -> tuple[ModelBundle, ModelBundle]:
    """The same windows trained with one member and with two (a few epochs: seconds)."""
    from detector.bench.model import _batches, _setup

    batches = _batches(_setup(16, 6, 6, 60, seed=3), 6)
    params = dict(hidden_size=16, epochs=2, validation_block_windows=5)
    return (train(batches, TrainingParams(**params), 10.0, 6), train(batches, TrainingParams(**params, members=2), 10.0, 6))


def test_training_members_calibrates_each_and_the_class_on_their_combined_held_out_scores(trained):
    one, two = trained
    cm = two.classes["host"]
    assert 2 == len(cm.members) and 2 == two.members and "members" == cm.threshold.method
    assert cm.threshold.value == pytest.approx(np.mean([m.threshold.value for m in cm.members]))
    summary = two.training["classes"]["host"]
    assert [7, member_seed(7, 1)] == [m["seed"] for m in summary["members"]] and member_seed(7, 1) != 8
    assert {"margin", "largest_held_out", "allowance"} <= summary.keys()
    # the first member is the model one member would be: the same seed, the same windows
    first, single = cm.members[0], one.classes["host"]
    for (name, a), (_, b) in zip(first.network.state_dict().items(), single.network.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    assert first.threshold.value == single.threshold.value
    assert not one.classes["host"].members and 1 == one.members
    second = cm.members[1].network.state_dict()["encoder.weight_hh_l0"]
    assert not torch.equal(second, single.network.state_dict()["encoder.weight_hh_l0"])


def test_one_members_screen_is_outvoted_and_said_while_most_members_screens_leave_a_window_out():
    """Held-out windows one member's screen left out still count in the class's margin (the
    median outvotes that member, as it does its scores), and training says which member left
    what out; a window most members left out stays out. The entity's first window, scored
    cold and never alerted on, is not in the margin."""
    from detector.model.threshold import Threshold
    from detector.model.training import _ensemble, _Member

    rng = np.random.default_rng(0)
    held = rng.uniform(0.5, 1.0, size=(1, 400))
    held[0, 10] = 3.0  # a benign mode one member's screen cut
    held[0, 20] = 50.0  # something every member's screen cut
    held[0, 0] = 3.5  # the entity's first window
    first = np.zeros_like(held, dtype=bool)
    first[0, 0] = True
    members = []
    for i in range(3):
        th = Threshold(4.0, "pot", 1e-4, 1.0, 0.0, 0.1, 400, 20)
        benign = held.copy()
        benign[0, 20] = np.nan
        if i == 0:
            benign[0, 10] = np.nan
            th.n_outliers, th.outliers_from = 2, 3.0
        outliers = [{"entity": "global", "window_start": "t20", "score": 50.0}] + (
            [{"entity": "global", "window_start": "t10", "score": 3.0}] if i == 0 else [])
        summary = {"outliers": outliers, "threshold_interval": (3.9, 4.1), "epochs": 5, "best_validation_loss": 0.1,
                   "train_start": 0, "train_end": int(48 * 3.6e12), "entities_per_window": 1.0, "false_alarms_per_day": 0.1}
        cm = ClassModel(torch.nn.Module(), None, th)  # type: ignore[arg-type]
        members.append(_Member({"global": cm}, {"global": summary}, {"global": held.copy()}, {"global": benign}, {"global": False},
                               {"global": first}))
    _, summary = _ensemble(members, TrainingParams(members=3))
    s = summary["global"]
    assert 3.0 == pytest.approx(s["largest_held_out"])  # the window one member cut counts
    assert ["t20"] == [o["window_start"] for o in s["outliers"]]
    assert any(w.startswith("member 0 (seed 7) left 1 held-out window(s) out") for w in s["warnings"])  # t10, not t20
    assert not any(w.startswith("member 1") for w in s["warnings"])


THREE = TrainingParams(hidden_size=16, epochs=2, validation_block_windows=5, members=3)


@pytest.fixture(scope="module")
def three_one_by_one() -> tuple[list, ModelBundle, list[dict]]:
    """Windows, and three members trained on them one after another in this process, with
    what training logged."""
    from structlog.testing import capture_logs

    from detector.bench.model import _batches, _setup

    batches = _batches(_setup(16, 6, 6, 60, seed=3), 6)
    with capture_logs() as logs:
        bundle = train(batches, THREE, 10.0, 6, workers=1)
    return batches, bundle, logs


def _same_members(one: ModelBundle, other: ModelBundle) -> None:
    for cls, cm in one.classes.items():
        theirs = other.classes[cls]
        assert 3 == len(cm.members) == len(theirs.members) and cm.threshold.value == theirs.threshold.value
        for a, b in zip(cm.members, theirs.members, strict=True):
            for (name, wa), (_, wb) in zip(a.network.state_dict().items(), b.network.state_dict().items(), strict=True):
                assert torch.equal(wa, wb), name
            assert a.threshold == b.threshold and np.array_equal(a.scaler.error_scale, b.scaler.error_scale)
    assert one.training["classes"] == other.training["classes"]


def test_members_trained_at_once_in_processes_are_the_members_trained_one_after_another(three_one_by_one):
    """Members trained in spawned worker processes (training.member_workers) are the very
    networks trained one after another in this process, and training logs the same lines in
    the same order (after the first, which says how many trained at once): the workers change
    when the members train, not what they are."""
    from structlog.testing import capture_logs

    batches, one_by_one, one_by_one_logs = three_one_by_one
    with capture_logs() as at_once_logs:
        at_once = train(batches, THREE, 10.0, 6, workers=2)
    _same_members(one_by_one, at_once)
    said = {"event": "members_training", "members": 3, "log_level": "info"}
    assert {**said, "at_once": 1} == one_by_one_logs[0] and {**said, "at_once": 2} == at_once_logs[0]
    assert one_by_one_logs[1:] == at_once_logs[1:] and any(e["event"] == "class_trained" for e in at_once_logs)


def _member_workers_of(parent: int) -> list[int]:
    """The pids of `parent`'s multiprocessing workers (not its resource tracker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


def test_a_member_whose_worker_is_killed_is_trained_here_the_same_network(three_one_by_one):
    """A worker killed (the OOM killer's SIGKILL) breaks the pool: training says which members
    it lost and trains them in this process, and the model is the one trained one after another."""
    import os
    import signal
    import threading
    import time

    from structlog.testing import capture_logs

    batches, one_by_one, _ = three_one_by_one
    killed: list[int] = []

    def kill_a_worker() -> None:
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            for pid in _member_workers_of(os.getpid())[:1]:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    with capture_logs() as logs:
        survived = train(batches, THREE, 10.0, 6, workers=2)
    killer.join()
    assert killed, "no worker to kill"
    lost = [e for e in logs if e["event"] == "member_workers_lost"]
    assert 1 == len(lost) and lost[0]["members"] and "warning" == lost[0]["log_level"]
    _same_members(one_by_one, survived)


def test_a_worker_lost_before_every_member_was_handed_out_leaves_the_rest_to_this_process(three_one_by_one, monkeypatch):
    """The pool breaks while the members are still being handed out (a worker killed as it
    starts: the next submit raises BrokenProcessPool): the members handed out come back from
    the workers, the others are trained here, and the model is the one trained one after
    another. A full suite once hit this order in the test above, and training failed."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from structlog.testing import capture_logs

    batches, one_by_one, _ = three_one_by_one
    submit = ProcessPoolExecutor.submit
    calls: list[int] = []

    def breaks_after_the_first(self, fn, /, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise BrokenProcessPool("A child process terminated abruptly, the process pool is not usable anymore")
        return submit(self, fn, *args, **kwargs)

    monkeypatch.setattr(ProcessPoolExecutor, "submit", breaks_after_the_first)
    with capture_logs() as logs:
        survived = train(batches, THREE, 10.0, 6, workers=2)
    lost = [e for e in logs if e["event"] == "member_workers_lost"]
    assert 1 == len(lost) and [1, 2] == lost[0]["members"]
    _same_members(one_by_one, survived)


def _workers_in_a_daemonic_process(queue) -> None:
    from detector.model.training import member_workers

    queue.put(member_workers(3, 1, 1))


def test_members_train_at_once_on_the_cpus_and_memory_there_are_and_one_by_one_in_a_daemonic_process(monkeypatch):
    """As many workers as the CPUs this process may run on hold at the torch threads each
    takes, as fit in half the available memory, and one in a daemonic process (the daemon's
    retraining child), which may not start any."""
    import multiprocessing
    import os

    from detector.model.training import member_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3, 4, 5, 6, 7})
    assert 3 == member_workers(3, 1, 1 << 20) and 1 == member_workers(1, 1, 1 << 20)
    assert 2 == member_workers(3, 4, 1 << 20) and 1 == member_workers(3, 8, 1 << 20)
    assert 1 == member_workers(3, 1, 1 << 50)  # a petabyte of windows: one member at a time
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert 1 == member_workers(3, 1, 1 << 20)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_workers_in_a_daemonic_process, args=(queue,), daemon=True)
    child.start()
    try:
        assert 1 == queue.get(timeout=120)
    finally:
        child.join(timeout=30)


_NO_SEMAPHORES = """
import json
from structlog.testing import capture_logs
from detector.bench.model import _batches, _setup
from detector.model.training import train
from tests.model.test_members import THREE, _same_members

batches = _batches(_setup(16, 6, 6, 60, seed=3), 6)
with capture_logs() as logs:
    fallback = train(batches, THREE, 10.0, 6, workers=2)
_same_members(train(batches, THREE, 10.0, 6, workers=1), fallback)
print(json.dumps(logs[:2]))
"""


@pytest.mark.skipif(not can_unshare_mounts(), reason="needs root and unshare(1) for a private mount namespace")
def test_members_train_here_where_no_worker_can_start(tmp_path):
    """Where worker processes cannot be had (here /dev/shm read-only in a mount namespace of
    its own, so no semaphore for the pool's queues), training says so and trains the members
    in its own process, the same networks, where it used to fail."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    script = tmp_path / "no_semaphores.py"
    script.write_text(_NO_SEMAPHORES)
    shell = f"mount -t tmpfs -o ro tmpfs /dev/shm && exec {sys.executable} {script}"
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", shell], cwd=repo,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(repo)})
    assert 0 == done.returncode, done.stderr[-2000:]
    first, second = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"event": "members_training", "members": 3, "at_once": 2, "log_level": "info"} == first
    assert "member_workers_unavailable" == second["event"] and "warning" == second["log_level"]
    assert "Read-only file system" in second["reason"]


_FEW_TASKS = """
import json, os, sys
from pathlib import Path
from structlog.testing import capture_logs
from detector.bench.model import _batches, _setup
from detector.model.training import train
from tests.model.test_members import THREE, _same_members

batches = _batches(_setup(16, 6, 6, 60, seed=3), 6)
one_by_one = train(batches, THREE, 10.0, 6, workers=1)  # this process's own threads start here, outside the limit
group, room = Path(sys.argv[1]), int(sys.argv[2])
(group / "cgroup.procs").write_text(str(os.getpid()))
(group / "pids.max").write_text(str(int((group / "pids.current").read_text()) + room))
with capture_logs() as logs:
    at_once = train(batches, THREE, 10.0, 6, workers=2)
_same_members(one_by_one, at_once)
print(json.dumps([e for e in logs if e["event"].startswith("member_workers")]))
"""


def _pids_hierarchy() -> Path | None:
    """Where a pids cgroup can be made on this machine (v2 with the controller, or v1), or None."""
    import os

    if os.geteuid() != 0:
        return None
    v2 = Path("/sys/fs/cgroup")
    if (v2 / "cgroup.controllers").is_file() and "pids" in (v2 / "cgroup.controllers").read_text().split():
        return v2
    return Path("/sys/fs/cgroup/pids") if Path("/sys/fs/cgroup/pids/cgroup.procs").is_file() else None


@pytest.mark.skipif(_pids_hierarchy() is None, reason="needs root and a writable pids cgroup hierarchy")
def test_members_train_where_the_tasks_run_out_as_the_workers_start(tmp_path):
    """A process that may start no more tasks than a few (a cgroup's pids.max, systemd's
    TasksMax=) as its member workers start: the pool then cannot start its manager thread
    (which raised "can't start new thread" out of training), a worker process, or, a few
    tasks later, its call queue's feeder thread (which killed the manager thread, and
    training waited for ever). Training says so and trains the members here, the same
    networks. With room for 0 and 3 more tasks, each in a pids group of its own."""
    import os
    import subprocess
    import sys
    import uuid

    repo = Path(__file__).resolve().parents[2]
    script = tmp_path / "few_tasks.py"
    script.write_text(_FEW_TASKS)
    groups = [_pids_hierarchy() / f"netad-test-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for group in groups:
        group.mkdir()
    runs: list[subprocess.Popen] = []
    try:
        if not (groups[0] / "pids.max").exists():  # v2 with pids not in the parent's cgroup.subtree_control
            pytest.skip(f"no pids.max in a new group under {groups[0].parent}")
        runs += [subprocess.Popen([sys.executable, str(script), str(group), str(room)], cwd=repo, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(repo)})
                for group, room in zip(groups, (0, 3), strict=True)]
        for run in runs:
            out, err = run.communicate(timeout=300)
            assert 0 == run.returncode, err[-2000:]
            said = json.loads(out.strip().splitlines()[-1])
            assert 1 == len(said) and said[0]["event"] in ("member_workers_unavailable", "member_workers_lost")
            assert "warning" == said[0]["log_level"] and said[0]["reason"]
    finally:
        for run in runs:
            run.kill()
            run.wait()
        for group in groups:
            for _ in range(50):  # its last workers may still be exiting
                try:
                    group.rmdir()
                    break
                except OSError:
                    import time

                    time.sleep(0.1)


def test_stopping_the_workers_waits_for_the_pool_s_manager_to_close_its_pipe():
    """_stop_workers (Ctrl-C, the daemon's SIGTERM to its retraining) returns once the pool's
    manager thread has ended, its wake-up pipe closed. Returning at once left the manager
    closing the pipe while the interpreter's exit wrote to it: the retraining child exited 1
    with an EBADF traceback instead of 143 (once, in a fresh clone's full suite)."""
    import multiprocessing
    import time
    from concurrent.futures import ProcessPoolExecutor

    from detector.model.training import _stop_workers

    pool = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"))
    futures = [pool.submit(time.sleep, 30) for _ in range(2)]
    while not all(f.running() for f in futures):
        time.sleep(0.05)
    manager, wakeup = pool._executor_manager_thread, pool._executor_manager_thread_wakeup
    assert manager is not None and manager.is_alive()
    _stop_workers(pool)
    assert not manager.is_alive()
    assert wakeup._closed  # the exit hook skips a closed pipe
