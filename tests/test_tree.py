"""_tree: how a job's processes are found and stopped, on real processes.

Each test runs its scenario in a Python process of its own: a subreaper (and
what it adopts) must not be this test process.
"""

import json
import subprocess
import sys
import textwrap
from typing import Any, Dict

import pytest

from conftest import REPO, gone

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's /proc")


def scenario(code: str) -> Dict[str, Any]:
    """Run ``code`` after ``from hydra_plugins.hydra_joblib_launcher._tree import *``;
    it prints one JSON object, returned here."""
    script = "from hydra_plugins.hydra_joblib_launcher._tree import *\n" + textwrap.dedent(code)
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    result: Dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


QUIET = "stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL"


def test_a_process_that_ignores_sigterm_gets_sigkill_after_the_grace_period() -> None:
    result = scenario(
        f"""
        import json, subprocess, time
        tree = JobTree()
        child = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 300 & wait"], {QUIET})
        time.sleep(0.3)
        started = time.monotonic()
        stopped = tree.stop(grace_s=1.0)
        print(json.dumps({{"stopped": stopped, "took": time.monotonic() - started,
                          "child": child.pid, "left": [p.pid for p in tree._new()]}}))
        """
    )
    # the shell ignores SIGTERM; its sleep does not, and goes at once
    assert result["stopped"][str(result["child"])] == "sh"
    assert set(result["stopped"].values()) == {"sh", "sleep"}
    assert 1.0 <= result["took"] < 3.0
    assert result["left"] == []


def test_an_orphan_stays_in_the_tree_of_a_subreaper_and_is_stopped() -> None:
    result = scenario(
        f"""
        import json, subprocess, sys
        assert become_subreaper()
        tree = JobTree()
        start = ("import subprocess; p = subprocess.Popen(['sleep', '300'], "
                 "start_new_session=True, {QUIET}); print(p.pid)")
        orphan = int(subprocess.run([sys.executable, "-c", "import subprocess;" + start],
                                    capture_output=True, text=True, check=True).stdout)
        print(json.dumps({{"orphan": orphan, "stopped": tree.stop()}}))
        """
    )
    assert result["stopped"] == {str(result["orphan"]): "sleep"}
    assert gone([result["orphan"]]) == []


def test_what_ran_before_the_job_and_multiprocessing_helpers_are_left_alone() -> None:
    result = scenario(
        f"""
        import json, multiprocessing, os, subprocess, time
        before = subprocess.Popen(["sleep", "300"], {QUIET})
        tree = JobTree()
        context = multiprocessing.get_context("forkserver")
        job_process = context.Process(target=time.sleep, args=(300,))
        job_process.start()
        from multiprocessing import forkserver, resource_tracker
        helpers = [forkserver._forkserver._forkserver_pid, resource_tracker._resource_tracker._pid]
        stopped = tree.stop()
        job_process.join()
        # the fork server still serves the next job
        again = context.Process(target=time.sleep, args=(0,))
        again.start()
        again.join()
        alive = [p.pid for p in descendants(os.getpid()) if p.running]
        before.kill()
        print(json.dumps({{"stopped": stopped, "job_process": job_process.pid,
                          "exitcode": job_process.exitcode, "again": again.exitcode,
                          "before": before.pid, "helpers": helpers, "alive": alive}}))
        """
    )
    assert list(result["stopped"]) == [str(result["job_process"])]
    assert result["exitcode"] == -15  # SIGTERM, and multiprocessing knows it
    assert result["again"] == 0
    assert set(result["alive"]) >= {result["before"], *result["helpers"]}


def test_a_process_group_is_stopped_whole_after_its_leader_died() -> None:
    result = scenario(
        f"""
        import json, os, signal, subprocess, sys, time
        leader = subprocess.Popen(
            [sys.executable, "-c",
             "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"],
            start_new_session=True, {QUIET})
        time.sleep(0.5)
        orphans = [p.pid for p in descendants(leader.pid)]
        leader.kill()
        leader.wait()
        stopped = stop_groups([leader.pid, os.getpgrp()])
        print(json.dumps({{"leader": leader.pid, "orphans": orphans, "stopped": stopped}}))
        """
    )
    # the launcher's own group is never stopped; the dead leader's group is
    assert list(result["stopped"]) == [str(result["leader"])]
    assert list(result["stopped"][str(result["leader"])]) == [str(p) for p in result["orphans"]]
    assert gone(result["orphans"]) == []
