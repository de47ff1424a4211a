"""Ring buffer and perf buffer readers: records out of the kernel, in bulk."""
