"""What to build: a kernel *target* (architecture, configuration, image) for one vehicle.

The source, the series, the cache and the build steps are the same whatever runs the kernel;
what differs between User-Mode Linux and, say, an x86_64 kernel booted in a VM is captured by a
:class:`KernelTarget`. Every field is part of the cache key, so two targets never share an
entry.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

__all__ = ["TARGETS", "UML", "VM", "VM_CONTROL", "KernelTarget"]


@dataclasses.dataclass(frozen=True)
class KernelTarget:
    """How to configure and build one kind of kernel from the 6.1 tree."""

    #: Short name, for messages and build records (``"um"``).
    name: str
    #: ``ARCH=`` for every configuring and building ``make``.
    arch: str
    #: The make target producing the base configuration (``defconfig``).
    base_config: str
    #: Config fragments taken from the series folder, merged in this order after
    #: :attr:`tooling_config`.
    config_fragments: tuple[str, ...]
    #: Options the tooling itself needs of this kernel (how it boots, where output goes),
    #: merged first so that the series' fragments can still override them.
    tooling_config: str
    #: What ``make`` builds.
    make_targets: tuple[str, ...]
    #: The bootable result, relative to the tree; published as ``linux`` in the cache entry.
    image: str
    #: ``ARCH=`` for ``make headers_install``; None means the host's architecture.
    headers_arch: str | None = None
    #: Whether the patch series is applied. An unpatched *control* kernel sets False and is
    #: otherwise built the same way.
    apply_series: bool = True

    def describe(self) -> dict[str, Any]:
        """The build-relevant fields as plain data (what the cache key hashes)."""
        record = dataclasses.asdict(self)
        record.pop("tooling_config")  # hashed on its own, as part of the recipe
        for name in ("config_fragments", "make_targets"):
            record[name] = list(record[name])
        return record

    def fingerprint(self) -> bytes:
        """:meth:`describe` as canonical JSON bytes."""
        return json.dumps(self.describe(), sort_keys=True, separators=(",", ":")).encode()


# Options the UML tooling relies on, merged before the series' um.config so the fragment can
# still override them: hostfs for the root, devtmpfs for /dev/ttyN, tmpfs for /dev/shm (Python's
# multiprocessing needs it), devpts for tests that open ptys, sysrq as a power-off fallback.
_UML_TOOLING_CONFIG = """\
CONFIG_HOSTFS=y
CONFIG_DEVTMPFS=y
CONFIG_DEVTMPFS_MOUNT=y
CONFIG_TMPFS=y
CONFIG_UNIX98_PTYS=y
CONFIG_MAGIC_SYSRQ=y
CONFIG_STDERR_CONSOLE=y
CONFIG_SSL=y
CONFIG_NULL_CHAN=y
"""

#: The patched kernel as User-Mode Linux: an ordinary host executable (see :mod:`.uml`).
#: UML's top Makefile refuses ``headers_install`` ("Headers not exportable for UML"); UML on
#: x86_64 uses the x86_64 system call table and uapi, so the host architecture's headers are
#: the right ones for programs run inside it.
UML = KernelTarget(
    name="um",
    arch="um",
    base_config="defconfig",
    config_fragments=("um.config",),
    tooling_config=_UML_TOOLING_CONFIG,
    make_targets=("linux",),
    image="linux",
    headers_arch=None,
    apply_series=True,
)

# What virtme-ng needs of a kernel it boots (and what the VM vehicle relies on): the host's
# root over 9p on virtio-pci, overlayfs for its writable /etc, /tmp..., devtmpfs, a serial
# console for the kernel's messages, ACPI to power off (QEMU then exits) and to find the CPUs.
_VM_TOOLING_CONFIG = """\
CONFIG_PCI=y
CONFIG_ACPI=y
CONFIG_HYPERVISOR_GUEST=y
CONFIG_PARAVIRT=y
CONFIG_KVM_GUEST=y
CONFIG_VIRTIO_MENU=y
CONFIG_VIRTIO=y
CONFIG_VIRTIO_PCI=y
CONFIG_VIRTIO_CONSOLE=y
CONFIG_HW_RANDOM=y
CONFIG_HW_RANDOM_VIRTIO=y
CONFIG_NET=y
CONFIG_NETWORK_FILESYSTEMS=y
CONFIG_NET_9P=y
CONFIG_NET_9P_VIRTIO=y
CONFIG_9P_FS=y
CONFIG_OVERLAY_FS=y
CONFIG_DEVTMPFS=y
CONFIG_DEVTMPFS_MOUNT=y
CONFIG_TTY=y
CONFIG_SERIAL_8250=y
CONFIG_SERIAL_8250_CONSOLE=y
CONFIG_MAGIC_SYSRQ=y
CONFIG_BLK_DEV_INITRD=y
"""

#: The patched kernel for the x86_64 VM vehicle (see :mod:`.vm`): SMP, PREEMPT, lockdep and
#: KASAN, on a small configuration (``allnoconfig`` plus the fragments) so that a fresh
#: machine builds it in minutes.
VM = KernelTarget(
    name="x86_64-debug",
    arch="x86_64",
    base_config="allnoconfig",
    config_fragments=("x86_64-vm.config", "x86_64-debug.config", "x86_64-series.config"),
    tooling_config=_VM_TOOLING_CONFIG,
    make_targets=("bzImage",),
    image="arch/x86/boot/bzImage",
    headers_arch="x86",
    apply_series=True,
)

#: The same kernel without the series: the control that tells a regression of the series from
#: what the unpatched 6.1 (or QEMU's timing) does anyway.
VM_CONTROL = dataclasses.replace(
    VM,
    name="x86_64-debug-control",
    apply_series=False,
    config_fragments=("x86_64-vm.config", "x86_64-debug.config"),
)

#: Every target the tooling knows; ``prune`` keeps the current build of each.
TARGETS: tuple[KernelTarget, ...] = (UML, VM, VM_CONTROL)
