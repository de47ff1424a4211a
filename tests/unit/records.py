"""Records packed exactly as the BPF programs write them (model/record.py), and a fake /proc:
the shared helpers of the decoder and output tests (a helper module, not a test module)."""

from __future__ import annotations

from pathlib import Path

from sigscope.model import record as rec
from sigscope.model.signals import SI_USER

SENDER_TGID, SENDER_TID = 500, 501
SIGUSR1 = 10
DELIVERED, IGNORED = 0, 1


def pack(**fields: object) -> bytes:
    """One record; fields not given are what an empty record holds."""
    values: dict[str, object] = {
        name: (b"" if name.endswith("comm") else 0) for name in rec.FIELD_NAMES
    }
    values.update(sender_tgid=SENDER_TGID, sender_tid=SENDER_TID, sender_uid=1000,
                  sender_comm=b"sender", arg_pidfd=-1, gen_result=rec.GEN_NONE, sig=SIGUSR1)
    unknown = set(fields) - set(rec.FIELD_NAMES)
    assert not unknown, unknown
    values.update(fields)
    return rec.RECORD_STRUCT.pack(*(values[name] for name in rec.FIELD_NAMES))


def call(call_id: int = 1000, ret: int = 0, via: str = "kill", **fields: object) -> bytes:
    fields.setdefault("ktime_ns", call_id + 10)
    return pack(kind=rec.KIND_CALL, via=rec.VIA_CODES[via], call_id=call_id, ret=ret, **fields)


def recipient(tid: int, ngen: int = 0, group: int = 1, comm: bytes = b"target") -> dict:
    return dict(target_tid=tid, target_comm=comm, gen_code=SI_USER, gen_group=group,
                gen_result=DELIVERED, ngen=ngen)


def fanout(call_id: int, index: int, tid: int, via: str = "kill", **fields: object) -> bytes:
    fields.setdefault("ktime_ns", call_id + 5)
    return pack(kind=rec.KIND_FANOUT, via=rec.VIA_CODES[via], call_id=call_id,
                **{**recipient(tid, ngen=index), **fields})


def fake_proc(root: Path, tasks: dict[int, tuple[int, str]]) -> Path:
    """A /proc with `status` (Tgid) and `comm` for each tid: (tgid, comm)."""
    for tid, (tgid, comm) in tasks.items():
        task = root / str(tid)
        task.mkdir(parents=True)
        (task / "status").write_text(f"Name:\t{comm}\nTgid:\t{tgid}\nPid:\t{tid}\n")
        (task / "comm").write_text(comm + "\n")
    return root


