"""Helpers of tools/kernel-matrix: boot Debian kernels under qemu TCG and run commands inside.

Stdlib only. The pure parts (feature table, cpio writer, module ordering, apt source parsing,
command line) are unit tested in tests/unit/test_kernel_matrix.py; the rest drives apt-get,
debootstrap and qemu and is exercised by running the tool.
"""
