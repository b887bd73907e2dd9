"""What the CPU is: fields of Linux's ``/proc/cpuinfo`` (read by :mod:`msakit.provenance` for a
run's record and by :mod:`msakit.modules.linear` to choose its backend)."""

from __future__ import annotations


def cpuinfo_field(name: str) -> str | None:
    """A field of the first CPU in Linux's ``/proc/cpuinfo`` (``model name``, ``vendor_id``);
    None where there is no such file or field."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.split(":", 1)[0].strip() == name:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
