"""The eBPF engine: bpf(2) and perf_event_open(2) through ctypes, an assembler, maps,
programs, tracefs, attachments and event readers. Nothing here knows about signals."""
