"""qemu-migration-harness: prove QEMU live migration works, cell by cell."""

__version__ = "0.1.0"
