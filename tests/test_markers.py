"""The `workflow` marker guard in conftest.py: a test that runs Snakemake without the marker fails, so
`-m "not workflow"` runs no Snakemake. The inner sessions stop at the guard: no Snakemake runs here."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import require_workflow_marker

INNER_TESTS = '''
import pytest
from conftest import copy_workflow, require_workflow_marker, snakemake


def test_unmarked_snakemake(tmp_path):
    snakemake(tmp_path, "--version")


def test_unmarked_copy_workflow(tmp_path):
    copy_workflow(tmp_path)


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    return snakemake(tmp_path_factory.mktemp("wider"), "--version")


def test_unmarked_through_a_module_fixture(planned):
    pass


@pytest.mark.workflow
def test_marked():
    require_workflow_marker()


class TestMarkedClass:
    pytestmark = pytest.mark.workflow

    def test_in_a_marked_class(self):
        require_workflow_marker()
'''

MODULE_MARKED = '''
import pytest
from conftest import require_workflow_marker

pytestmark = [pytest.mark.slow, pytest.mark.workflow]


def test_module_marked():
    require_workflow_marker()
'''


def test_guard_fails_this_unmarked_test():
    with pytest.raises(AssertionError, match=r"test_markers.py::test_guard_fails_this_unmarked_test runs Snakemake"):
        require_workflow_marker()


def test_unmarked_callers_fail_marked_ones_pass(pytester: pytest.Pytester):
    shutil.copy(Path(__file__).with_name("conftest.py"), pytester.path / "conftest.py")
    pytester.makepyfile(test_inner=INNER_TESTS, test_module_marked=MODULE_MARKED)
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rfE")
    r.assert_outcomes(passed=3, failed=2, errors=1)
    out = r.stdout.str()
    for name in ("test_unmarked_snakemake", "test_unmarked_copy_workflow", "test_unmarked_through_a_module_fixture"):
        assert f"test_inner.py::{name} runs Snakemake" in out, out[-3000:]

