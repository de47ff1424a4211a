"""Loading BPF programs, the verifier's verdict, and program info.

``Program.load`` first tries without a verifier log (cheap); when the kernel refuses the program
(EACCES/EINVAL) it loads again with a log so that ``VerifierError`` can say why.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterable
from typing import NamedTuple

from sigscope.bpf import uapi
from sigscope.bpf.maps import validate_object_name
from sigscope.bpf.syscall import (
    BPFError,
    BpfProgInfo,
    EnableStatsAttr,
    FdOwner,
    ObjIdAttr,
    ProgLoadAttr,
    bpf,
    close_fd,
    obj_get_info_len,
)

__all__ = [
    "ProgInfo",
    "Program",
    "RunTimeStats",
    "VerifierError",
    "loaded_program_ids",
    "program_info_by_id",
]

INSN_SIZE = 8
# Tried in turn while the kernel says the log did not fit (ENOSPC). Kernels before 6.4 refuse a
# log_size above 16 MiB - 1 (UINT_MAX >> 8).
_LOG_SIZES = (1 << 20, (1 << 24) - 1)
# Summary lines of the verifier log that say nothing about why the program was refused.
_LOG_NOISE_PREFIXES = (
    "processed ",
    "verification time",
    "stack depth",
    "-- END PROG LOAD LOG --",
)


class VerifierError(BPFError):
    """The verifier refused a program. ``.log`` is the full log; ``str()`` is one line."""

    def __init__(self, err: int, program_name: str, log: str) -> None:
        super().__init__(err, "BPF_PROG_LOAD")
        self.program_name = program_name
        self.log = log

    def __reduce__(self):
        return (type(self), (self.errno, self.program_name, self.log))

    @property
    def reason(self) -> str:
        """The last log line that says something (not the 'processed N insns' summary)."""
        for line in reversed(self.log.splitlines()):
            text = line.strip()
            if text and not text.startswith(_LOG_NOISE_PREFIXES):
                return text
        return self.strerror or "no verifier log"

    def last_lines(self, count: int = 20) -> str:
        """The last `count` non-empty lines of the verifier log."""
        lines = [line for line in self.log.splitlines() if line.strip()]
        return "\n".join(lines[-count:])

    def __str__(self) -> str:
        return f"verifier rejected program {self.program_name!r}: {self.reason}"


# bpf_prog_info is filled up to here when the kernel has recursion_misses (Linux 5.12).
RECURSION_MISSES_END = BpfProgInfo.recursion_misses.offset + 8


class ProgInfo(NamedTuple):
    id: int
    name: str
    type: int
    tag: str
    run_cnt: int
    run_time_ns: int
    # None: the kernel's bpf_prog_info has no recursion_misses (before Linux 5.12), so it
    # cannot say how many runs it skipped; never a 0 that only looks like a count.
    recursion_misses: int | None
    verified_insns: int
    load_time_ns: int

    @classmethod
    def from_struct(cls, info: BpfProgInfo, filled: int | None = None) -> ProgInfo:
        """`filled`: the bytes of `info` the kernel wrote (obj_get_info_len); None: all."""
        has_misses = filled is None or filled >= RECURSION_MISSES_END
        return cls(
            id=info.id,
            name=info.name.decode("ascii", "replace"),
            type=info.type,
            tag=bytes(info.tag).hex(),
            run_cnt=info.run_cnt,
            run_time_ns=info.run_time_ns,
            recursion_misses=info.recursion_misses if has_misses else None,
            verified_insns=info.verified_insns,
            load_time_ns=info.load_time,
        )


def _instructions_bytes(insns: bytes | bytearray | Iterable) -> bytes:
    if isinstance(insns, (bytes, bytearray)):
        code = bytes(insns)
    else:
        from sigscope.bpf.asm import assemble  # same layer; only needed when handed instructions

        code = assemble(list(insns))
    if not code or len(code) % INSN_SIZE:
        raise ValueError(f"program is {len(code)} bytes: not a whole number of instructions")
    return code


class Program(FdOwner):
    """A loaded BPF program; the object owns the fd (close() or use as a context manager)."""

    kind = "program"

    verifier_log: str = ""  # the log of a load that asked for one (log_level > 0)

    def __init__(self, fd: int, prog_type: int, name: str) -> None:
        self._fd: int | None = fd
        self.prog_type = prog_type
        self.name = name

    @classmethod
    def load(
        cls,
        insns: bytes | list,
        prog_type: int = uapi.BPF_PROG_TYPE_TRACEPOINT,
        name: str = "",
        license: str = "GPL",
        log_level: int = 0,
        expected_attach_type: int = 0,
        prog_flags: int = 0,
        attach_btf_id: int = 0,
    ) -> Program:
        code = _instructions_bytes(insns)
        encoded_name = validate_object_name(name, "program")
        code_buf = ctypes.create_string_buffer(code, len(code))
        license_buf = ctypes.create_string_buffer(license.encode("ascii"))

        def attempt(level: int, log_size: int) -> tuple[int, int, str]:
            """Returns (fd or -1, errno, log text)."""
            log_buf = ctypes.create_string_buffer(log_size) if log_size else None
            attr = ProgLoadAttr(
                prog_type=prog_type,
                insn_cnt=len(code) // INSN_SIZE,
                insns=ctypes.addressof(code_buf),
                license=ctypes.addressof(license_buf),
                log_level=level,
                log_size=log_size,
                log_buf=ctypes.addressof(log_buf) if log_buf is not None else 0,
                prog_flags=prog_flags,
                prog_name=encoded_name,
                expected_attach_type=expected_attach_type,
                attach_btf_id=attach_btf_id,
            )
            log_text = ""
            try:
                fd = bpf(uapi.BPF_PROG_LOAD, attr)
                err = 0
            except BPFError as error:
                fd, err = -1, error.errno or 0
            if log_buf is not None:
                log_text = log_buf.value.decode("utf-8", "replace")
            return fd, err, log_text

        fd, err, log_text = attempt(log_level, _LOG_SIZES[0] if log_level else 0)
        if fd < 0 and err in (errno.EACCES, errno.EINVAL) and not log_text:
            for size in _LOG_SIZES:
                fd, err, log_text = attempt(max(log_level, 1), size)
                if err != errno.ENOSPC:
                    break
            if err == errno.ENOSPC:  # even the largest log was truncated: report what we have
                err = errno.EACCES
        if fd < 0:
            if err in (errno.EACCES, errno.EINVAL) and log_text.strip():
                raise VerifierError(err, name or "(unnamed)", log_text)
            raise BPFError(err, "BPF_PROG_LOAD", f"program {name or '(unnamed)'}")
        program = cls(fd, prog_type, name)
        program.verifier_log = log_text
        return program

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"Program(name={self.name!r}, type={self.prog_type}, {state})"

    def info(self) -> ProgInfo:
        """Id, name and run statistics (run_cnt/run_time_ns count only while
        kernel.bpf_stats_enabled is on)."""
        info = BpfProgInfo()
        return ProgInfo.from_struct(info, obj_get_info_len(self.fd, info))


def loaded_program_ids() -> list[int]:
    """Ids of every BPF program loaded on the system (BPF_PROG_GET_NEXT_ID)."""
    ids: list[int] = []
    current = 0
    while True:
        attr = ObjIdAttr(start_id=current)
        try:
            bpf(uapi.BPF_PROG_GET_NEXT_ID, attr)
        except BPFError as err:
            if err.errno == errno.ENOENT:
                return ids
            raise
        current = attr.next_id
        ids.append(current)


def program_info_by_id(prog_id: int) -> ProgInfo | None:
    """Info of the program with this id, or None when it is gone."""
    try:
        fd = bpf(uapi.BPF_PROG_GET_FD_BY_ID, ObjIdAttr(start_id=prog_id))
    except BPFError as err:
        if err.errno == errno.ENOENT:
            return None
        raise
    try:
        info = BpfProgInfo()
        return ProgInfo.from_struct(info, obj_get_info_len(fd, info))
    finally:
        close_fd(fd)


class RunTimeStats:
    """Keeps run_cnt/run_time_ns counting while open (BPF_ENABLE_STATS, Linux 5.8).

    Unlike the kernel.bpf_stats_enabled sysctl this is reference-counted per fd, so it neither
    disturbs nor is disturbed by whoever else toggles statistics.
    """

    def __init__(self) -> None:
        self._fd: int | None = bpf(
            uapi.BPF_ENABLE_STATS, EnableStatsAttr(type=uapi.BPF_STATS_RUN_TIME)
        )

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            close_fd(fd)

    def __enter__(self) -> RunTimeStats:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def load_programs(
    specs: Iterable[tuple],
    prog_type: int = uapi.BPF_PROG_TYPE_TRACEPOINT,
    parallel: int = 2,
) -> list[Program]:
    """Load several programs, in order, with up to `parallel` verifications at once.

    Verification is most of a tracer's start-up and runs in the loading thread, outside the
    GIL, so two threads halve it on two CPUs; and `specs` may be a generator, so the next
    program is assembled while the kernel verifies the previous ones. If any load fails, every
    program loaded is closed and the first failure (in order) is raised.
    """
    import threading

    slots = threading.Semaphore(max(1, parallel))
    results: dict = {}
    threads = []

    def load(index: int, code: bytes, name: str, extra: dict) -> None:
        try:
            results[index] = Program.load(code, **{"prog_type": prog_type, "name": name,
                                                   **extra})
        except BaseException as error:  # handed to the caller below
            results[index] = error
        finally:
            slots.release()

    building_failed: BaseException | None = None
    try:
        for index, (name, insns, *more) in enumerate(specs):
            code = _instructions_bytes(insns)
            slots.acquire()
            thread = threading.Thread(target=load, args=(index, code, name,
                                                         more[0] if more else {}), daemon=True)
            thread.start()
            threads.append(thread)
    except BaseException as error:  # building a program failed: release what was loaded
        building_failed = error
    for thread in threads:
        thread.join()
    loaded = [results[i] for i in range(len(threads))]
    failures = [r for r in loaded if isinstance(r, BaseException)]
    if failures or building_failed is not None:
        for program in loaded:
            if isinstance(program, Program):
                program.close()
        raise failures[0] if failures else building_failed  # type: ignore[misc]
    return loaded
