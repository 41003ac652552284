"""The pure control plane: objects in, objects out (no system calls)."""
