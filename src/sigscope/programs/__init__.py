"""The kernel side: pure builders of the BPF programs (no fds, no maps created here)."""
