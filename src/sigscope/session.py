"""What `sigscope trace` (tracer.Tracer) and `sigscope top` (top.Counter) share: owning the
kernel objects of the signal probes, starting them, and taking them down in the right order.

The program builders (programs/) are pure: the run-time steps around them are here — making
the in-flight map, detaching by program role (DETACH_ORDER), and counting the calls still
parked once the probes are gone.

Every map, program, perf event and link is owned by a file descriptor of this process, so
closing the session (or the process dying in any way) leaves nothing loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from sigscope.bpf import features, uapi
from sigscope.bpf.attach import Attachment, attach_tp_btf, attach_tracepoint, detach_all
from sigscope.bpf.maps import ArrayMap, HashMap, Map
from sigscope.bpf.privileges import check_privileges, raise_memlock_limit
from sigscope.bpf.program import Program, load_programs
from sigscope.bpf.tracefs import tracefs_root
from sigscope.errors import SetupError
from sigscope.model import record as rec
from sigscope.programs import signal as probes
from sigscope.programs.common import ProgramPlan, Role

_M = TypeVar("_M", bound=Map)

# Detach order, by role: entries first; once they are gone no new call is parked, and every
# parked call still has its exit attached (or is counted by count_unfinished_calls). Then all
# the rest at once (in parallel: attach.detach_all).
DETACH_ORDER: tuple[frozenset[Role], ...] = (
    frozenset({Role.ENTRY}),
    frozenset({Role.GENERATE, Role.EXIT, Role.FATE}),
)


def make_inflight_map(claim: str | None = None) -> Map:
    """The in-flight map the programs of `claim` (programs/signal.py CLAIM_*; default:
    probes.inflight_claim()) expect. CLAIM_CMPXCHG: an array (key: u32 slot index; value: a
    record, then the owner word). CLAIM_TID_HASH: a hash map (key: u32 thread id; value: a
    record). Either way a value starts with the record, so user space reads both alike.
    Raises ValueError for an unknown claim, BPFError when the kernel refuses the map."""
    claim = claim or probes.inflight_claim()
    if claim == probes.CLAIM_TID_HASH:
        return HashMap(4, rec.RECORD_SIZE, probes.INFLIGHT_SLOTS, name="sigscope_calls")
    if claim != probes.CLAIM_CMPXCHG:
        raise ValueError(f"unknown in-flight claim {claim!r}: one of {', '.join(probes.CLAIMS)}")
    return ArrayMap(probes.INFLIGHT_VALUE_SIZE, probes.INFLIGHT_SLOTS, name="sigscope_calls")


def count_unfinished_calls(inflight: Map) -> int:
    """After detaching: calls parked by an entry probe whose exit never ran (a thread preempted
    inside kill(2) while the probes were detached). Their records were never written."""
    kind_at = rec.offset("kind")
    return sum(1 for _key, value in inflight.lookup_batch()
               if int.from_bytes(value[kind_at:kind_at + 4], "little") == rec.KIND_CALL)


def detach_in_order(attachments: list[tuple[Role, Attachment]]) -> None:
    """Detach (role, attachment) pairs in DETACH_ORDER, each group in parallel; empties the
    list."""
    for roles in DETACH_ORDER:
        detach_all(a for role, a in attachments if role in roles)
    detach_all(a for _, a in attachments)  # a role DETACH_ORDER does not name: last
    attachments.clear()


class ProbeSession:
    """Subclasses build their maps and programs in `_setup()` with `_own()` and
    `_load_and_attach()`; `start()` and `_detach()`/`_teardown()` do the rest."""

    # True: attach the sys_enter_<call> probes (three programs per signal) even where the
    # kernel lets signal_generate and sys_exit read the call from the sender's saved user
    # registers (two; programs/entry_regs.py). The records are the same either way. An
    # instance attribute set before start() overrides this default.
    entry_probes: bool = False

    def __init__(self, claim: str | None = None) -> None:
        # How calls claim their in-flight record (programs/signal.py CLAIM_*); None: what this
        # kernel supports (probes.inflight_claim()), decided at start.
        if claim is not None and claim not in probes.CLAIMS:
            raise ValueError(f"unknown in-flight claim {claim!r}: one of "
                             f"{', '.join(probes.CLAIMS)}")
        self.claim = claim
        self._maps: list[Map] = []
        self._programs: list[Program] = []
        self._attachments: list[tuple[Role, Attachment]] = []
        self._inflight: Map | None = None
        self._recursion_at_start = 0
        self._unfinished = 0
        self.started = False
        self.finished = False

    def start(self):  # noqa: ANN201 (returns self, typed by each subclass)
        """Check privileges, build and attach the probes. Raises one-line errors; on failure
        nothing stays loaded."""
        if self.started:
            return self
        check_privileges()
        raise_memlock_limit()
        tracefs_root()
        features.check_essentials()
        if self.claim is None:
            self.claim = probes.inflight_claim()
        try:
            self._setup()
        except BaseException:
            self._teardown()
            raise
        self._recursion_at_start = self._recursion_misses() or 0
        self.started = True
        return self

    def _setup(self) -> None:
        raise NotImplementedError

    @property
    def _started_claim(self) -> str:
        """The claim start() decided (for _setup(): the builders probe nothing)."""
        assert self.claim is not None, "start() decides the claim before _setup()"
        return self.claim

    def _own(self, m: _M) -> _M:
        self._maps.append(m)
        return m

    def _own_inflight_map(self) -> Map:
        """Make and own the in-flight map of self.claim (make_inflight_map); it is the one
        counted at detach (count_unfinished_calls)."""
        self._inflight = self._own(make_inflight_map(self.claim))
        return self._inflight

    def _load_and_attach(self, plans: Iterable[ProgramPlan]) -> None:
        """Load every plan's program, then attach each to its tracepoints, in the plans'
        order. Loading everything first means a verifier error leaves nothing attached."""
        loaded: list[ProgramPlan] = []

        def specs() -> Iterator[tuple[str, list, dict]]:
            for plan in plans:
                loaded.append(plan)
                yield plan.name, plan.insns, _load_args(plan.tracepoints)

        programs = load_programs(specs())
        self._programs += programs
        for prog, plan in zip(programs, loaded, strict=True):
            for system, event in plan.tracepoints:
                if system == probes.TP_BTF:
                    attachment = attach_tp_btf(prog, event)
                else:
                    attachment = attach_tracepoint(prog, system, event)
                self._attachments.append((plan.role, attachment))

    def _detach(self) -> None:
        """Detach by role (DETACH_ORDER: entries first); then count the calls whose exit never
        ran, whose records were therefore never written."""
        detach_in_order(self._attachments)
        if self.started and self._inflight is not None and not self._inflight.closed:
            self._unfinished = count_unfinished_calls(self._inflight)

    def _teardown(self) -> None:
        for _, attachment in self._attachments:
            attachment.close()
        self._attachments.clear()
        for prog in self._programs:
            prog.close()
        self._programs.clear()
        for m in self._maps:
            m.close()
        self._maps.clear()

    @property
    def skipped_runs_counted(self) -> bool:
        """Whether the kernel counts the probe runs it skips (bpf_prog_info.recursion_misses,
        Linux 5.12): without it, runs skipped because another BPF program was running on the
        CPU are lost without a trace, and `lost` cannot include them."""
        return features.has("recursion_misses")

    @property
    def skipped_runs(self) -> int | None:
        """Probe runs the kernel skipped since start (bpf_prog_info.recursion_misses; reported
        apart from `lost`: whether they matched the filters is unknown) while the probes are
        loaded; None when this kernel cannot count them (before Linux 5.12)."""
        if not self.skipped_runs_counted:
            return None
        return max(0, (self._recursion_misses() or 0) - self._recursion_at_start)

    def _recursion_misses(self) -> int | None:
        """Runs the kernel skipped because another BPF program was running on that CPU; None
        when the kernel cannot count them (skipped_runs_counted is False)."""
        total = 0
        for prog in self._programs:
            try:
                misses = prog.info().recursion_misses
            except OSError:
                continue
            if misses is None:
                return None
            total += misses
        return total


def _load_args(tracepoints: tuple) -> dict:
    """Program.load arguments of a plan: a tp_btf target (probes.TP_BTF) is a
    BPF_PROG_TYPE_TRACING program attached, at load, to the BTF id of btf_trace_<event>."""
    if not tracepoints or tracepoints[0][0] != probes.TP_BTF:
        return {}
    event = tracepoints[0][1]
    type_id = features.tp_btf_type_id(event)
    if type_id is None:
        raise SetupError(f"no BTF type btf_trace_{event} for the tp_btf program")
    return {"prog_type": uapi.BPF_PROG_TYPE_TRACING,
            "expected_attach_type": uapi.BPF_TRACE_RAW_TP, "attach_btf_id": type_id}
