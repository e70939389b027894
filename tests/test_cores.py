"""engine/cores.py: `workers: auto` picks the decoding workers from the cores the job may use (its CPU affinity),
and an extraction job asks the scheduler for the CPUs its workers need."""
import os
import subprocess
import sys

import pytest

from visfeat.engine.cores import AUTO, JOB_CORES, auto_workers, job_threads, resolve_workers, usable_cores


@pytest.mark.parametrize("cores, workers", [(1, 0), (2, 0), (4, 0), (5, 3), (8, 6), (16, 14), (64, 62)])
def test_auto_is_no_worker_on_few_cores_and_all_but_two_cores_on_more(cores, workers):
    assert auto_workers(cores) == workers


def test_auto_reads_the_affinity_and_says_what_it_chose():
    """A job pinned to one core (as a SLURM cpuset pins it) decodes in the main process."""
    one = min(os.sched_getaffinity(0))
    code = "from visfeat.engine.cores import resolve_workers, usable_cores; print(usable_cores(), resolve_workers('auto'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         preexec_fn=lambda: os.sched_setaffinity(0, {one})).stdout.strip()
    assert out == "1 (0, 'workers auto -> 0 (1 core)')"
    cores = len(os.sched_getaffinity(0))
    n = auto_workers(cores)
    assert usable_cores() == cores
    assert resolve_workers(AUTO) == (n, f"workers auto -> {n} ({cores} core{'s' if cores > 1 else ''})")


def test_an_explicit_count_is_used_as_given():
    assert resolve_workers(3) == (3, "3 workers") and resolve_workers(0) == (0, "0 workers")


def test_a_job_asks_for_its_workers_and_the_main_process_or_up_to_job_cores_under_auto():
    assert job_threads(0) == 1 and job_threads(3) == 4 and job_threads(AUTO) == min(usable_cores(), JOB_CORES)
