"""`saejax.kernels.cpu`: the allocator settings (in subprocesses: they are process-wide) and where they stay off."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from saejax.kernels import cpu


@pytest.mark.slow
def test_tune_malloc_is_idempotent_and_can_be_turned_off():
    """In subprocesses: the settings are process-wide and should not leak into the test session."""
    code = "from saejax.kernels import cpu; print(cpu.tune_malloc(), cpu.tune_malloc())"
    env = {k: v for k, v in os.environ.items() if k != cpu.DISABLE_ENV}
    on = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    linux = str(sys.platform.startswith("linux"))
    assert on.stdout.split() == [linux, linux]
    off = subprocess.run([sys.executable, "-c", code], env={**env, cpu.DISABLE_ENV: "1"},
                         capture_output=True, text=True, check=True)
    assert off.stdout.split() == ["False", "False"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tune_malloc_keeps_a_freed_block_over_2_gib():
    """A step's scratch past 2 GiB (d_sae 32768, batch 4096) must stay in the heap when freed: a trim
    threshold capped at INT_MAX returned it to the system, and the next step faulted it in again."""
    code = """if True:
        import ctypes
        from saejax.kernels import cpu
        assert cpu.tune_malloc()
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t]
        block = libc.malloc(3 << 30)  # never touched: no page is faulted in
        top = libc.sbrk(0)
        libc.free(ctypes.c_void_p(block))
        print(block < top, libc.sbrk(0) == top)  # from the heap, and the heap did not shrink
    """
    env = {k: v for k, v in os.environ.items() if k != cpu.DISABLE_ENV}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "True"]


@pytest.mark.parametrize("platforms, devices, expected", [
    ("", (), False), ("cpu", ("/dev/nvidia0",), False), ("cuda", (), True), ("tpu,cpu", (), True),
    ("", ("/dev/nvidia0",), True), ("", ("/dev/accel0",), True),
])
def test_malloc_tuning_stays_off_on_gpu_and_tpu_hosts(tmp_path, platforms, devices, expected):
    for device in devices:
        (tmp_path / Path(device).name).touch()
    globs = tuple(str(tmp_path / Path(pattern).name) for pattern in cpu.ACCELERATOR_DEVICES)
    environ = {"JAX_PLATFORMS": platforms} if platforms else {}
    assert cpu.accelerator_host(environ, globs) is expected
