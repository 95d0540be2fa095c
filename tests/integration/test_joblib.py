"""joblib's Parallel on a real `farm up` (backend "farm"), checked against loky in the same run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import joblib
import pytest
from joblib import Parallel, delayed, parallel_config

import farm.joblib
from tests.helpers import ROOT
from tests.helpers.calls import add, fails, nap, tell_wait_then_nest, wait_gate_then_tell
from tests.helpers.farmproc import EXECUTOR_POOL, executor_farm
from tests.helpers.gate import Gate

#: A second pool of another size, for the calls of parallel_config(function="farm.inner").
INNER_POOL = """
[functions."farm.inner"]
target = "farm.executor.call:run_call"
workers = 1
"""


@pytest.fixture(scope="module")
def farm_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    tmp = tmp_path_factory.mktemp("joblib")
    pools = EXECUTOR_POOL + INNER_POOL
    with executor_farm(tmp, pools, idle={"farm.python": 2, "farm.inner": 1}) as (up, key):
        yield {"backend": "farm", "servers": [f"unix:{up.unix}"], "key_file": str(key)}


def on_farm(config: dict[str, object], n_jobs: int, work: Iterator, **kw: object) -> list:
    with parallel_config(**config):  # type: ignore[arg-type]
        return list(Parallel(n_jobs=n_jobs, **kw)(work))  # type: ignore[arg-type]


def on_loky(n_jobs: int, work: Iterator, **kw: object) -> list:
    with parallel_config(backend="loky"):
        return list(Parallel(n_jobs=n_jobs, **kw)(work))  # type: ignore[arg-type]


@pytest.mark.timeout(120)
def test_results_match_loky_for_lists_generators_and_return_as_generator(
    farm_backend: dict[str, object],
) -> None:
    expected = on_loky(2, (delayed(add)(i, i) for i in range(300)))
    assert on_farm(farm_backend, -1, (delayed(add)(i, i) for i in range(300))) == expected
    out = on_farm(farm_backend, 2, (delayed(add)(i, i) for i in range(300)), return_as="generator")
    assert out == expected


@pytest.mark.timeout(60)
def test_a_tasks_exception_is_raised_as_joblib_does(farm_backend: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="3") as on_loky_err:
        on_loky(2, (delayed(fails)(i) if i == 3 else delayed(add)(i) for i in range(10)))
    with pytest.raises(ValueError, match="3") as on_farm_err:
        on_farm(
            farm_backend, 2, (delayed(fails)(i) if i == 3 else delayed(add)(i) for i in range(10))
        )
    assert str(on_farm_err.value) == str(on_loky_err.value)
    # The backend is usable again after the abort.
    assert on_farm(farm_backend, 2, (delayed(add)(i) for i in range(5))) == list(range(5))


@pytest.mark.timeout(60)
def test_a_tasks_exception_leaves_the_tasks_already_sent_running(
    farm_backend: dict[str, object], tmp_path: Path
) -> None:
    """docs/executor.md: where loky kills its workers on a task's exception, the farm's are
    shared, so a task already sent runs to its end after Parallel has raised."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as told, Gate(tmp_path / "g") as gate:
        told.bind(str(tmp_path / "told"))
        told.settimeout(30)
        work = [delayed(wait_gate_then_tell)(gate.path, str(tmp_path / "told")), delayed(fails)(3)]
        with pytest.raises(ValueError, match="3"):
            on_farm(farm_backend, 2, iter(work))
        gate.open()  # only now may the first task end: Parallel raised while it ran
        assert told.recv(16) == b"ran"


@pytest.mark.timeout(60)
def test_n_jobs_minus_one_is_the_farms_worker_count(farm_backend: dict[str, object]) -> None:
    backend = farm.joblib.FarmBackend(
        servers=farm_backend["servers"], key_file=farm_backend["key_file"]
    )
    assert backend.effective_n_jobs(-1) == 2
    assert backend.effective_n_jobs(-2) == 1
    assert backend.effective_n_jobs(5) == 5
    pids = on_farm(farm_backend, -1, (delayed(os.getpid)() for _ in range(50)))
    assert os.getpid() not in pids and 1 <= len(set(pids)) <= 2


@pytest.mark.timeout(60)
def test_n_jobs_minus_one_counts_the_pool_the_calls_go_to(farm_backend: dict[str, object]) -> None:
    # parallel_config(backend="farm", function="farm.inner") (docs/executor.md): its -1 was
    # farm.python's count, whatever the size of the pool its calls went to.
    inner = {**farm_backend, "function": "farm.inner"}
    backend = farm.joblib.FarmBackend(**{k: v for k, v in inner.items() if k != "backend"})
    assert backend.effective_n_jobs(-1) == 1
    with parallel_config(**inner):  # type: ignore[arg-type]
        assert joblib.effective_n_jobs(-1) == 1


@pytest.mark.timeout(180)
def test_a_scikit_learn_fit_gives_the_same_model_as_with_loky(
    farm_backend: dict[str, object],
) -> None:
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    x, y = make_classification(n_samples=300, n_features=8, random_state=0)

    def fit(**config: object) -> list[float]:
        with parallel_config(**config):  # type: ignore[arg-type]
            model = RandomForestClassifier(n_estimators=20, n_jobs=-1, random_state=0)
            model.fit(x, y)
        return list(model.predict_proba(x[:20])[:, 1])

    assert fit(**farm_backend) == fit(backend="loky")


@pytest.mark.timeout(120)
def test_parallel_on_the_farm_inside_a_farm_task_runs_in_that_worker(tmp_path: Path) -> None:
    # Its own farm: without the fix its two workers wait on each other for good. Each of the
    # two outer tasks runs on one of the two workers (the gate opens once both run) and
    # sends an inner Parallel to the same pool: the inner tasks had no worker left, and
    # everything waited (loky's nested Parallel finishes). They now run in the outer task's
    # worker, one after another, as joblib's process backends do when nested.
    (tmp_path / "farm").mkdir()
    with executor_farm(tmp_path / "farm") as (up, key):
        config = {"backend": "farm", "servers": [f"unix:{up.unix}"], "key_file": str(key)}
        told_path = str(tmp_path / "told")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as told, Gate(tmp_path / "g") as gate:
            told.bind(told_path)
            told.settimeout(60)
            outer = [delayed(tell_wait_then_nest)(told_path, gate.path, config, 5)] * 2
            with parallel_config(**config):  # type: ignore[arg-type]
                results = Parallel(n_jobs=2, batch_size=1, return_as="generator")(outer)
                assert [told.recv(16), told.recv(16)] == [b"ran", b"ran"]  # both workers held
                gate.open()
                assert list(results) == [[0, 2, 4, 6, 8]] * 2


@pytest.mark.timeout(120)
def test_a_large_array_argument_is_said_to_travel_with_each_task(
    farm_backend: dict[str, object],
) -> None:
    """loky memory-maps an array over max_nbytes once per Parallel; here each batch carries
    its own copy (a spill file each), several times slower: the backend says so, once."""
    import numpy as np

    big = np.zeros(2 << 20, dtype=np.uint8)  # over joblib's max_nbytes of 1M
    with pytest.warns(UserWarning, match="copy of a 2 MiB array") as said:
        assert on_farm(farm_backend, 2, (delayed(len)(big) for _ in range(4))) == [2 << 20] * 4
    assert len([w for w in said if "MiB array" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say: small, or memmapping turned off
        assert on_farm(farm_backend, 2, (delayed(len)(big[:1000]) for _ in range(4))) == [1000] * 4
        assert (
            on_farm(farm_backend, 2, (delayed(len)(big) for _ in range(2)), max_nbytes=None)
            == [2 << 20] * 2
        )


#: A script's function using a global that will not pickle, run under the farm backend.
LOCKED_GLOBAL = """
import json, sys, threading
import farm.joblib
from joblib import Parallel, delayed, parallel_config

LOCK = threading.Lock()


def f(x):
    with LOCK:
        return x


config = json.loads(sys.argv[1])
try:
    with parallel_config(**config):
        Parallel(n_jobs=2)(delayed(f)(i) for i in range(4))
except TypeError as exc:
    print(json.dumps([str(exc), getattr(exc, "__notes__", [])]))
"""


def run_script(tmp_path: Path, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(text)
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=90,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.timeout(120)
def test_what_will_not_pickle_is_named_in_a_note_under_joblib_too(
    farm_backend: dict[str, object], tmp_path: Path
) -> None:
    # docs/executor.md: a global that will not pickle is named in a note on the error. The
    # backend submits joblib's batch, not the user's function, and the note never came.
    done = run_script(tmp_path, LOCKED_GLOBAL, json.dumps(farm_backend))
    assert done.returncode == 0, done.stderr
    error, notes = json.loads(done.stdout)
    assert "cannot pickle '_thread.lock' object" in error
    assert any("its global 'LOCK' cannot be pickled" in note for note in notes), notes


#: Three Parallels of a large array each, under Python's default warning filters.
THREE_PARALLELS = """
import json, sys
import numpy as np
import farm.joblib
from joblib import Parallel, delayed, parallel_config

config = json.loads(sys.argv[1])
big = np.zeros(2 << 20, dtype=np.uint8)
with parallel_config(**config):
    for _ in range(3):
        Parallel(n_jobs=2)(delayed(len)(big) for _ in range(4))  # the user's line
"""


@pytest.mark.timeout(120)
def test_the_large_array_warning_points_at_the_user_s_line_once_per_parallel(
    farm_backend: dict[str, object], tmp_path: Path
) -> None:
    # It pointed at farm/joblib.py (stacklevel=2 is inside joblib's dispatch), and Python's
    # default filter showed it once per process, where docs/executor.md says once per
    # Parallel.
    done = run_script(tmp_path, THREE_PARALLELS, json.dumps(farm_backend))
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "UserWarning: farm:" in line]
    line = THREE_PARALLELS.splitlines().index(
        "        Parallel(n_jobs=2)(delayed(len)(big) for _ in range(4))  # the user's line"
    )
    assert said and all(s.startswith(f"{tmp_path / 'script.py'}:{line + 1}: ") for s in said), (
        done.stderr
    )
    assert len(said) == 3, done.stderr


#: Small arrays first: the first large one goes out from a done-callback, in the executor's
#: thread (pre_dispatch="2": joblib dispatches each batch after the first two from there).
LATE_LARGE = """
import json, sys
import numpy as np
import farm.joblib
from joblib import Parallel, delayed, parallel_config

config = json.loads(sys.argv[1])
args = [np.zeros(10)] * 8 + [np.zeros(2 << 20, dtype=np.uint8)] * 4
with parallel_config(**config):
    Parallel(n_jobs=2, batch_size=1, pre_dispatch="2")(delayed(len)(a) for a in args)  # here
"""


@pytest.mark.timeout(120)
def test_the_large_array_warning_of_a_batch_sent_from_a_callback_points_at_the_user_s_line(
    farm_backend: dict[str, object], tmp_path: Path
) -> None:
    # Only the current thread's stack was walked: a batch dispatched from a done-callback
    # has no user's frame on it, and the warning named threading.py.
    done = run_script(tmp_path, LATE_LARGE, json.dumps(farm_backend))
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "UserWarning: farm:" in line]
    line = [n for n, text in enumerate(LATE_LARGE.splitlines()) if text.endswith("# here")]
    assert len(said) == 1 and said[0].startswith(f"{tmp_path / 'script.py'}:{line[0] + 1}: "), (
        done.stderr
    )


@pytest.mark.timeout(120)
def test_a_parallel_run_inside_the_loop_over_anothers_generator_leaves_it_running(
    farm_backend: dict[str, object],
) -> None:
    # Both Parallels of one parallel_config block share the backend object, so the inner
    # one's end (terminate) came while the outer one still had batches to send: it shut
    # their executor down, the outer's next batch failed ("joblib configures a backend
    # before it submits") and the loop hung. (loky's terminate drops its executor too, and
    # the same loop fails there now and then: 'NoneType' object has no attribute 'submit'.)
    with parallel_config(**farm_backend):  # type: ignore[arg-type]
        naps = (delayed(nap)(0.02 + i / 1000) for i in range(30))
        outer = Parallel(n_jobs=2, return_as="generator")(naps)
        got = [sum(Parallel(n_jobs=2)(delayed(add)(x, j) for j in range(3))) for x in outer]
    assert got == pytest.approx([3 * (0.02 + i / 1000) + 3 for i in range(30)])
