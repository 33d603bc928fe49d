"""The code executor on hand-written programs: correct ones pass; a looping, a crashing, a memory-hungry and a
file-writing one fail within small limits and fail only themselves; pass@k is the unbiased estimator."""

import math
import os
import time

import pytest

from trainer.eval.code_eval import CodeEval, pass_at_k
from trainer.eval.sandbox import Limits, isolation_line, network_isolation, run_program

LIMITS = Limits(wall_s=20.0, cpu_s=2, memory_bytes=512 << 20)  # wall: room for a loaded machine
TEST = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"
CORRECT = "def add(a, b):\n    return a + b"
WRONG = "def add(a, b):\n    return a * b"
LOOPING = "def add(a, b):\n    while True:\n        pass"
CRASHING = "import ctypes\ndef add(a, b):\n    return ctypes.string_at(0)"
HUNGRY = "def add(a, b):\n    blocks = [bytearray(64 << 20) for _ in range(64)]\n    return a + b"
SLEEPING = "import time\ndef add(a, b):\n    time.sleep(60)\n    return a + b"


def writing(path: str) -> str:
    return f"def add(a, b):\n    with open({path!r}, 'w') as f:\n        f.write('x' * 100000)\n    return a + b"


def test_each_program_fails_alone_within_its_limits(tmp_path):
    target = str(tmp_path / "written.txt")
    programs = [CORRECT, LOOPING, CRASHING, HUNGRY, writing(target), WRONG, CORRECT]
    started = time.perf_counter()
    scores, results = CodeEval(LIMITS, workers=4).compute([TEST] * len(programs), [[p] for p in programs], k=[1])
    elapsed = time.perf_counter() - started
    passed = [results[i][0][1]["passed"] for i in range(len(programs))]
    assert passed == [True, False, False, False, False, False, True]
    reasons = [results[i][0][1]["result"] for i in range(len(programs))]
    assert reasons[1] == "killed: SIGXCPU", reasons[1]  # 2 s of CPU
    assert reasons[2] == "killed: SIGSEGV", reasons[2]
    assert reasons[3] == "failed: exit 1"  # MemoryError under the address-space cap
    assert reasons[4] == "failed: exit 1"  # Python ignores SIGXFSZ: the write raises (file too large)
    assert not os.path.exists(target) or os.path.getsize(target) == 0
    assert scores == {"pass@1": pytest.approx(2 / 7)}
    assert elapsed < 20, elapsed
    # a program that waits without using CPU ends at the wall-clock limit, with whatever it started
    started = time.perf_counter()
    forking = "import subprocess\nsubprocess.Popen(['sleep', '60'])\n" + SLEEPING
    outcome = run_program(forking + "\n" + TEST, Limits(wall_s=1.0))
    assert outcome.reason == "timed out" and time.perf_counter() - started < 10


def test_programs_run_in_a_scrubbed_environment_and_a_temporary_folder(monkeypatch):
    monkeypatch.setenv("TRAINER_SECRET", "x")
    assert run_program("import os\nassert 'TRAINER_SECRET' not in os.environ", LIMITS).passed
    assert run_program("import os\nassert os.getcwd().rsplit('/', 1)[-1].startswith('trainer-exec-')", LIMITS).passed


@pytest.mark.skipif(not network_isolation(), reason="no user namespaces here")
def test_programs_have_no_network():
    probe = "import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', 22))"
    assert run_program(probe, LIMITS).reason == "failed: exit 1"  # no route: the namespace has only a down loopback
    assert "no network" in isolation_line()


def test_pass_at_k_is_the_unbiased_estimator():
    for n, c, k in [(10, 3, 1), (10, 3, 5), (20, 0, 1), (20, 20, 10), (7, 2, 7), (200, 13, 100)]:
        expected = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)
    assert pass_at_k(5, 1, 1) == pytest.approx(0.2)


def test_pass_at_k_over_samples_counts_each_problem():
    # problem 0: 2 of 4 samples pass; problem 1: 0 of 4; problem 2: 4 of 4
    samples = [[CORRECT, WRONG, CORRECT, WRONG], [WRONG] * 4, [CORRECT] * 4]
    scores, _ = CodeEval(LIMITS).compute([TEST] * 3, samples, k=[1, 2])
    assert scores["pass@1"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert scores["pass@2"] == pytest.approx(((1 - math.comb(2, 2) / math.comb(4, 2)) + 0 + 1) / 3)
