"""The siginfo that send.py queues, byte by byte (no signals are sent here)."""

from __future__ import annotations

import errno
import os
import struct

import pytest

from sigscope.send import SIGINFO_SIZE, VIAS, SendError, build_siginfo, send_signal


def test_vias_are_the_six_syscalls():
    assert VIAS == (
        "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_send_signal",
    )


def test_siginfo_layout_for_64_bit_abis():
    raw = bytes(build_siginfo(10, 0x1122334455667788))
    assert len(raw) == SIGINFO_SIZE == 128
    assert struct.unpack_from("=iii", raw, 0) == (10, 0, -1)  # si_signo, si_errno, SI_QUEUE
    assert struct.unpack_from("=i", raw, 12) == (0,)  # padding before the pointer-aligned union
    assert struct.unpack_from("=iI", raw, 16) == (os.getpid(), os.getuid())
    assert struct.unpack_from("=Q", raw, 24) == (0x1122334455667788,)
    assert struct.unpack_from("=i", raw, 24) == (0x55667788,)  # sival_int overlays the low half
    assert raw[32:] == bytes(96)


def test_negative_value_is_sign_extended_sival():
    raw = bytes(build_siginfo(12, -2))
    assert struct.unpack_from("=q", raw, 24) == (-2,)
    assert struct.unpack_from("=i", raw, 24) == (-2,)


def test_value_out_of_range():
    with pytest.raises(SendError) as info:
        build_siginfo(10, 1 << 64)
    assert info.value.errno == errno.EINVAL


def test_unknown_via_and_missing_target_are_send_errors():
    with pytest.raises(SendError, match="unknown send path 'raise': use one of kill, tkill"):
        send_signal("raise", 10, pid=1)
    for via in VIAS:
        with pytest.raises(SendError) as info:
            send_signal(via, 10)
        assert info.value.errno == errno.EINVAL
        assert str(info.value).startswith(f"{via} needs ")
