import Glibc

/// Linux constants that Glibc's Swift module does not export (they need `_GNU_SOURCE` or newer
/// kernel headers than the module map sees). Each is the value in the kernel's uapi headers.
enum LinuxConstants {
    /// `SOL_UDP`: the UDP socket option level.
    static let solUDP = Int32(IPPROTO_UDP)
    /// `UDP_SEGMENT` (Linux 4.18): send one buffer as datagrams of a given size (GSO).
    static let udpSegment: Int32 = 103
    /// `UDP_GRO` (Linux 5.0): receive runs of datagrams coalesced into one buffer.
    static let udpGRO: Int32 = 104
    /// `IP_BIND_ADDRESS_NO_PORT` (Linux 4.2): choose the port at connect(2), not at bind(2).
    static let ipBindAddressNoPort: Int32 = 24
    /// `F_OFD_GETLK`, `F_OFD_SETLK` (Linux 3.15): record locks owned by an open file
    /// description rather than a process (Glibc exports them only with `_GNU_SOURCE`).
    static let fOFDGetLock: Int32 = 36
    static let fOFDSetLock: Int32 = 37
    /// `__O_TMPFILE`: with `O_DIRECTORY`, `O_TMPFILE` (a file without a name).
    static let oTmpFile: Int32 = 0o20000000
}
