"""The launchers' host-memory settings (experiments/_host_memory.py): one re-exec with glibc's malloc
tunables, CPU steps dispatched inline, and the step's temporaries kept in memory between steps."""
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
KEEP = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1073741824"
ALL = f"{KEEP}:glibc.malloc.hugetlb=1"


def test_adds_the_tunables_on_linux_glibc_with_thp():
    env = hm.malloc_environment({"PATH": "/bin"}, **LINUX_GLIBC)
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": ALL}
    env = hm.malloc_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, **LINUX_GLIBC)
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{ALL}"
    assert hm.malloc_environment({}, "Linux", ("glibc", "2.35"), "always")["GLIBC_TUNABLES"] == ALL


@pytest.mark.parametrize("environ, libc, thp, expected", [
    ({}, ("glibc", "2.34"), "madvise", KEEP),                                    # before malloc.hugetlb
    ({}, ("glibc", "2.26"), "always", KEEP),
    ({}, ("glibc", "2.36"), "never", KEEP),
    ({}, ("glibc", "2.36"), None, KEEP),                                         # no THP at all
    # the user's own value of a tunable wins; the others are still added
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, ("glibc", "2.36"), "madvise", f"glibc.malloc.hugetlb=0:{KEEP}"),
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=8"}, ("glibc", "2.36"), "madvise",
     "glibc.malloc.mmap_max=8:glibc.malloc.trim_threshold=1073741824:glibc.malloc.hugetlb=1"),
])
def test_adds_only_the_tunables_that_apply_and_are_not_set(environ, libc, thp, expected):
    assert hm.malloc_environment(environ, "Linux", libc, thp)["GLIBC_TUNABLES"] == expected


@pytest.mark.parametrize("environ, system, libc, thp", [
    ({"IARN_HOST_MALLOC": "default"}, "Linux", ("glibc", "2.36"), "madvise"),   # opted out
    ({"IARN_HOST_MALLOC": " Default "}, "Linux", ("glibc", "2.36"), "madvise"),
    ({}, "Darwin", ("", ""), "madvise"),
    ({}, "Linux", ("", ""), "madvise"),                                          # musl: no libc_ver
    ({}, "Linux", ("glibc", "2.25"), "madvise"),                                 # before tunables
    ({"GLIBC_TUNABLES": ALL}, "Linux", ("glibc", "2.36"), "madvise"),            # all set: the re-exec stops
    ({"GLIBC_TUNABLES": f"a.b=1:{KEEP}:glibc.malloc.hugetlb=0"}, "Linux", ("glibc", "2.36"), "madvise"),
    ({"GLIBC_TUNABLES": KEEP}, "Linux", ("glibc", "2.36"), "never"),
])
def test_leaves_the_environment_alone_where_nothing_is_to_add(environ, system, libc, thp):
    assert hm.malloc_environment(environ, system, libc, thp) is None


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
    import os, resource
    from absl import flags
    from experiments import _cli
    flags.DEFINE_string("word", "unset", "echoed back")
    flags.DEFINE_bool("faults", False, "time a computation with a 64 MiB temporary")
    def main(argv):
        import jax
        print(f"pid={os.getpid()} word={flags.FLAGS.word} args={argv[1:]} "
              f"tunables={os.environ.get('GLIBC_TUNABLES', '')} "
              f"async={jax.config.read('jax_cpu_enable_async_dispatch')}", flush=True)
        if flags.FLAGS.faults:
            import jax.numpy as jnp
            x, w = jnp.ones((16384, 64)), jnp.ones((64, 1024))
            f = jax.jit(lambda x, w: jnp.tanh(x @ w).T @ x)  # tanh(x @ w): a [16384, 1024] temporary
            temp = f.lower(x, w).compile().memory_analysis().temp_size_in_bytes
            for _ in range(3):  # the heap settles over the first calls
                f(x, w).block_until_ready()
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(4):
                f(x, w).block_until_ready()
            after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            print(f"temp_bytes={temp} faults_per_call={(after - before) / 4}", flush=True)
    if __name__ == "__main__":
        print("started", flush=True)
        _cli.run_main(main)
""")


def _launch(tmp_path, environ, *args):
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER)
    env = {**environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, str(script), "--word=kept", *args, "rest"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _clean_environment():
    return {k: v for k, v in os.environ.items() if k not in ("IARN_HOST_MALLOC", "GLIBC_TUNABLES")}


def test_a_launcher_reexecutes_once_with_the_tunables_and_keeps_its_arguments(tmp_path):
    environ = _clean_environment()
    applies = hm.malloc_environment(environ, platform.system(), platform.libc_ver(), hm.thp_mode())
    out = _launch(tmp_path, environ)
    assert "word=kept args=['rest']" in out and "async=False" in out
    if applies is None:
        assert out.count("started") == 1 and "tunables= " in out
    else:  # the parent printed "started", then exec'd itself; the child ran main with the tunables
        assert out.count("started") == 2 and out.count("pid=") == 1
        assert f"tunables={applies['GLIBC_TUNABLES']} " in out


def test_the_opt_out_runs_main_in_the_same_process_as_it_is(tmp_path):
    out = _launch(tmp_path, {**_clean_environment(), "IARN_HOST_MALLOC": "default"})
    assert out.count("started") == 1 and "tunables= " in out and "word=kept" in out and "async=True" in out


def _faults(out: str) -> tuple[int, float]:
    line = next(line for line in out.splitlines() if line.startswith("temp_bytes="))
    temp, faults = (part.split("=")[1] for part in line.split())
    return int(temp), float(faults)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc"
                    or hm._version(platform.libc_ver()[1]) < hm.MIN_GLIBC_KEEP,
                    reason="the malloc tunables need Linux with glibc >= 2.26")
def test_a_launchers_step_temporaries_stay_in_memory_between_calls(tmp_path):
    # 4 KiB pages (hugetlb=0, the user's own value, which the launcher keeps) so that faults count
    # pages: a temporary mapped afresh faults all of its pages again on every call
    environ = {**_clean_environment(), "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}
    out = _launch(tmp_path, environ, "--faults")
    assert out.count("started") == 2 and "async=False" in out
    temp, kept = _faults(out)
    assert temp >= 64 << 20  # over glibc's largest mmap threshold (32 MiB): mapped by default
    pages = temp // 4096
    assert kept < pages / 8, (kept, pages)  # what remains: the dot's small per-thread buffers
    if hm.thp_mode() != "always":  # with THP always the default also faults huge pages only
        _, default = _faults(_launch(tmp_path, {**environ, "IARN_HOST_MALLOC": "default"}, "--faults"))
        assert default > pages / 2, (default, pages)
