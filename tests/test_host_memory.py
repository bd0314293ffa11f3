"""The launchers' one re-exec with glibc's huge-page tunable (experiments/_host_memory.py)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from experiments import _host_memory as hm
from tests.conftest import REPO_ROOT

LINUX_GLIBC = dict(system="Linux", libc=("glibc", "2.36"), thp="madvise")


def test_adds_the_tunable_on_linux_glibc_with_thp():
    env = hm.huge_page_environment({"PATH": "/bin"}, **LINUX_GLIBC)
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    env = hm.huge_page_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, **LINUX_GLIBC)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert hm.huge_page_environment({}, "Linux", ("glibc", "2.35"), "always") is not None


@pytest.mark.parametrize("environ, system, libc, thp", [
    ({"IARN_HOST_MALLOC": "default"}, "Linux", ("glibc", "2.36"), "madvise"),   # opted out
    ({"IARN_HOST_MALLOC": " Default "}, "Linux", ("glibc", "2.36"), "madvise"),
    ({}, "Darwin", ("", ""), "madvise"),
    ({}, "Linux", ("", ""), "madvise"),                                          # musl: no libc_ver
    ({}, "Linux", ("glibc", "2.34"), "madvise"),                                 # before the tunable
    ({}, "Linux", ("glibc", "2.36"), "never"),
    ({}, "Linux", ("glibc", "2.36"), None),                                      # no THP at all
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "Linux", ("glibc", "2.36"), "madvise"),  # user's choice
    ({"GLIBC_TUNABLES": "a.b=1:glibc.malloc.hugetlb=1"}, "Linux", ("glibc", "2.36"), "madvise"),
])
def test_leaves_the_environment_alone_where_it_does_not_apply(environ, system, libc, thp):
    assert hm.huge_page_environment(environ, system, libc, thp) is None


def test_thp_mode_reads_the_bracketed_mode(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert hm.thp_mode(str(path)) == "madvise"
    path.write_text("[always] madvise never\n")
    assert hm.thp_mode(str(path)) == "always"
    path.write_text("garbled\n")
    assert hm.thp_mode(str(path)) is None
    assert hm.thp_mode(str(tmp_path / "absent")) is None


LAUNCHER = textwrap.dedent("""
    import os
    from absl import flags
    from experiments import _cli
    flags.DEFINE_string("word", "unset", "echoed back")
    def main(argv):
        print(f"pid={os.getpid()} word={flags.FLAGS.word} args={argv[1:]} "
              f"tunables={os.environ.get('GLIBC_TUNABLES', '')}", flush=True)
    if __name__ == "__main__":
        print("started", flush=True)
        _cli.run_main(main)
""")


def _launch(tmp_path, environ):
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER)
    env = {**environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, str(script), "--word=kept", "rest"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_launcher_reexecutes_once_with_the_tunable_and_keeps_its_arguments(tmp_path):
    environ = {k: v for k, v in os.environ.items() if k not in ("IARN_HOST_MALLOC", "GLIBC_TUNABLES")}
    applies = hm.huge_page_environment(environ, platform.system(), platform.libc_ver(), hm.thp_mode())
    out = _launch(tmp_path, environ)
    assert "word=kept args=['rest']" in out
    if applies is None:
        assert out.count("started") == 1 and "tunables=\n" in out
    else:  # the parent printed "started", then exec'd itself; the child ran main with the tunable
        assert out.count("started") == 2 and out.count("pid=") == 1
        assert "tunables=glibc.malloc.hugetlb=1" in out


def test_the_opt_out_runs_main_in_the_same_process_without_the_tunable(tmp_path):
    environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    out = _launch(tmp_path, {**environ, "IARN_HOST_MALLOC": "default"})
    assert out.count("started") == 1 and "tunables=\n" in out and "word=kept" in out
