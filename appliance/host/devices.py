"""The TAP device that reads the segment and the TUN device that serves won sessions.

The TAP is non-persistent: it vanishes when the process closes it or dies.
So is the TUN on the TUN path; on the kernel fast path the TUN is persistent,
so that the cluster IP, and the sessions the kernel serves, outlive a crash.

With offloads on, both use IFF_VNET_HDR: every frame carries a 10-byte
virtio_net_hdr, and the TAP accepts TSO, so the bridge hands over TCP
super-frames of up to 64 KB instead of MTU-sized ones. A super-frame read from
the TAP is written to the TUN as one packet; the header's offsets count from
the Ethernet header on the TAP and from the IP header on the TUN, so they are
shifted by the Ethernet header's length.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

import pytun

from appliance.errors import UserError

TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
VNET_HEADER = struct.Struct(
    "<BBHHHH"
)  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_LENGTH = VNET_HEADER.size
NO_OFFLOAD = bytes(VNET_LENGTH)
READ_SIZE = VNET_LENGTH + 18 + 65535 + 64  # header, Ethernet with VLAN, the largest IP packet


def _open(name: str, flags: int, what: str) -> pytun.TunTapDevice:
    try:
        return pytun.TunTapDevice(name=name, flags=flags)
    except OSError as error:
        code = error.errno if error.errno is not None else (error.args[0] if error.args else None)
        if code == errno.EPERM:
            raise UserError(f"creating the {what} device {name} needs CAP_NET_ADMIN") from None
        if code == errno.EACCES:
            raise UserError(
                f"cannot open /dev/net/tun to create {name}: permission denied "
                "(the device is usually mode 0666; check it or run as root)"
            ) from None
        if code == errno.EBUSY:
            raise UserError(
                f"device {name} is in use: is another appliance running in this namespace?"
            ) from None
        if code == errno.ENOENT:
            raise UserError(
                "/dev/net/tun does not exist: load the tun module (modprobe tun)"
            ) from None
        raise UserError(f"cannot create the {what} device {name}: {error}") from None


class _Device:
    """A TUN or TAP device of this process: it disappears when the process exits."""

    def __init__(self, name: str, kind: int, what: str, *, offloads: bool) -> None:
        flags = kind | pytun.IFF_NO_PI | (pytun.IFF_VNET_HDR if offloads else 0)
        self._device = _open(name, flags, what)
        self.name = name
        self.fd: int = self._device.fileno()
        self.header_length = VNET_LENGTH if offloads else 0
        os.set_blocking(self.fd, False)

    def write(self, data: bytes) -> bool:
        """Write one frame (TAP) or packet (TUN) built here, checksums filled in;
        False when the queue is full (it is dropped)."""
        try:
            if self.header_length:
                os.writev(self.fd, (NO_OFFLOAD, data))
            else:
                os.write(self.fd, data)
        except OSError:  # BlockingIOError included
            return False
        return True

    def close(self) -> None:
        self._device.close()


class TapDevice(_Device):
    """The appliance's port on the bridge: every frame of the segment, and claims out."""

    def __init__(self, name: str, *, offloads: bool) -> None:
        super().__init__(name, pytun.IFF_TAP, "TAP", offloads=offloads)
        if offloads:
            fcntl.ioctl(
                self.fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
            )
        self.mac = bytes(self._device.hwaddr)


class TunDevice(_Device):
    """Carries the cluster IP: packets written here reach the local kernel's stack."""

    def __init__(self, name: str, *, offloads: bool, persistent: bool = False) -> None:
        super().__init__(name, pytun.IFF_TUN, "TUN", offloads=offloads)
        # On the kernel fast path the kernel serves won sessions without this
        # process, so the cluster IP must outlive it (kill -9): the device
        # stays until `netlink.delete_link` removes it on a clean stop. On the
        # TUN path a device a crashed fast-path daemon left goes with this one.
        self._device.persist(persistent)

    def inject(self, frame: bytes, network_offset: int) -> bool:
        """Write the IP packet inside a TAP frame (offsets as the classifier gave them)."""
        body = memoryview(frame)[network_offset:]
        try:
            if not self.header_length:
                os.write(self.fd, body)
                return True
            flags, gso_type, header_length, gso_size, checksum_start, checksum_offset = (
                VNET_HEADER.unpack_from(frame)
            )
            if not flags and not gso_type:
                os.writev(self.fd, (NO_OFFLOAD, body))
                return True
            link_layer = network_offset - VNET_LENGTH
            header = VNET_HEADER.pack(
                flags,
                gso_type,
                max(0, header_length - link_layer) if header_length else 0,
                gso_size,
                max(0, checksum_start - link_layer) if checksum_start else 0,
                checksum_offset,
            )
            os.writev(self.fd, (header, body))
        except OSError:  # BlockingIOError included
            return False
        return True
