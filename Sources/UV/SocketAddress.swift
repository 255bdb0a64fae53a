import CLibUV
import Glibc

/// An IPv4 or IPv6 socket address (value type). The libuv functions are `uv_ip4_addr`, `uv_ip6_addr`, `uv_ip_name`.
public struct SocketAddress: Hashable, Sendable, CustomStringConvertible {
    /// The bytes of a `sockaddr_in` or `sockaddr_in6`.
    var storage: sockaddr_storage

    /// Parses a numeric host (IPv4 dotted or IPv6) and a port.
    public init(host: String, port: Int) throws(UVOperationError) {
        var storage = sockaddr_storage()
        let status: Int32 = withUnsafeMutablePointer(to: &storage) { p in
            if host.contains(":") {
                return p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { uv_ip6_addr(host, Int32(port), $0) }
            }
            return p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { uv_ip4_addr(host, Int32(port), $0) }
        }
        if status < 0 { throw UVOperationError("ip_addr", target: "\(host):\(port)", code: status) }
        self.storage = storage
    }

    init(storage: sockaddr_storage) { self.storage = storage }

    /// The address of a 4-byte (IPv4) or 16-byte (IPv6) host address and a port; nil for any
    /// other length.
    public init?(address: [UInt8], port: Int) {
        var storage = sockaddr_storage()
        let p = UInt16(truncatingIfNeeded: port).bigEndian
        switch address.count {
        case 4:
            withUnsafeMutablePointer(to: &storage) { s in
                s.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { a in
                    a.pointee.sin_family = sa_family_t(AF_INET)
                    a.pointee.sin_port = p
                    withUnsafeMutableBytes(of: &a.pointee.sin_addr) { $0.copyBytes(from: address) }
                }
            }
        case 16:
            withUnsafeMutablePointer(to: &storage) { s in
                s.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { a in
                    a.pointee.sin6_family = sa_family_t(AF_INET6)
                    a.pointee.sin6_port = p
                    withUnsafeMutableBytes(of: &a.pointee.sin6_addr) { $0.copyBytes(from: address) }
                }
            }
        default:
            return nil
        }
        self.storage = storage
    }

    /// The host address alone: 4 bytes (IPv4) or 16 (IPv6).
    public var addressBytes: [UInt8] {
        var s = storage
        return withUnsafePointer(to: &s) { p in
            if isIPv6 { return p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { a in withUnsafeBytes(of: a.pointee.sin6_addr) { Array($0) } } }
            return p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { a in withUnsafeBytes(of: a.pointee.sin_addr) { Array($0) } }
        }
    }

    /// The address of `host` (a numeric IPv4 or IPv6 address, brackets allowed: `[::1]`, or a
    /// name such as `localhost`, looked up once) and `port`. A name is resolved synchronously
    /// (`uv_getaddrinfo` without a callback): call it before the loop serves anything, as at
    /// start-up, never from a callback. The first address the resolver returns is used.
    /// The libuv function is `uv_getaddrinfo`.
    public static func resolve(_ host: String, port: Int, on loop: Loop) throws(UVOperationError) -> SocketAddress {
        var name = host
        if name.hasPrefix("["), name.hasSuffix("]") { name = String(name.dropFirst().dropLast()) }
        if let numeric = try? SocketAddress(host: name, port: port) { return numeric }
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        let request = UnsafeMutablePointer<uv_getaddrinfo_t>.allocate(capacity: 1)
        defer { request.deallocate() }
        let status = uv_getaddrinfo(loop.uv, request, nil, name, nil, &hints)
        if status < 0 { throw UVOperationError("getaddrinfo", target: host, code: status) }
        defer { uv_freeaddrinfo(request.pointee.addrinfo) }
        var entry = request.pointee.addrinfo
        while let e = entry {
            if let found = SocketAddress(e.pointee.ai_addr) {
                var address = found
                address.setPort(port)
                return address
            }
            entry = e.pointee.ai_next
        }
        throw UVOperationError("getaddrinfo", target: host, code: UV_EAI_NONAME.rawValue)
    }

    private mutating func setPort(_ port: Int) {
        let p = UInt16(truncatingIfNeeded: port).bigEndian
        let v6 = isIPv6
        withUnsafeMutablePointer(to: &storage) { s in
            if v6 {
                s.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee.sin6_port = p }
            } else {
                s.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_port = p }
            }
        }
    }

    init?(_ sa: UnsafePointer<sockaddr>?) {
        guard let sa else { return nil }
        var storage = sockaddr_storage()
        let length = sa.pointee.sa_family == sa_family_t(AF_INET6) ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size
        withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: UnsafeRawBufferPointer(start: sa, count: length)) }
        self.storage = storage
    }

    /// Whether this is an IPv6 address.
    public var isIPv6: Bool { storage.ss_family == sa_family_t(AF_INET6) }

    /// The numeric host, without brackets.
    public var host: String {
        var s = storage
        var buffer = [CChar](repeating: 0, count: 64)
        _ = withUnsafePointer(to: &s) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { uv_ip_name($0, &buffer, buffer.count) }
        }
        return String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The port.
    public var port: Int {
        var s = storage
        return withUnsafePointer(to: &s) { p in
            if isIPv6 { return p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin6_port)) } }
            return p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) }
        }
    }

    /// Whether the address is loopback (127.0.0.0/8 or ::1).
    public var isLoopback: Bool {
        let h = host
        return h.hasPrefix("127.") || h == "::1"
    }

    /// Whether the host is this machine: a loopback address or one of its interfaces' (libuv's
    /// `uv_interface_addresses`).
    public var isOnThisMachine: Bool {
        if isLoopback { return true }
        var list: UnsafeMutablePointer<uv_interface_address_t>?
        var count: Int32 = 0
        guard uv_interface_addresses(&list, &count) == 0, let list else { return false }
        defer { uv_free_interface_addresses(list, count) }
        let mine = host
        for i in 0..<Int(count) {
            var storage = sockaddr_storage()
            withUnsafeBytes(of: list[i].address) { from in
                withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: from.prefix($0.count))) }
            }
            if SocketAddress(storage: storage).host == mine { return true }
        }
        return false
    }

    public var description: String { isIPv6 ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Family and IP address without the port: what identifies the host (per-address limits).
    public var hostIdentityBytes: [UInt8] {
        let b = identityBytes
        return [b[0]] + Array(b[3...])
    }

    func withSockAddr<R>(_ body: (UnsafePointer<sockaddr>) -> R) -> R {
        var s = storage
        return withUnsafePointer(to: &s) { p in p.withMemoryRebound(to: sockaddr.self, capacity: 1, body) }
    }

    /// The bytes that identify the address: family, port and IP address (18 or 6+ bytes).
    /// Used for equality, hashing and binding handshake cookies to a source.
    public var identityBytes: [UInt8] {
        var s = storage
        return withUnsafeBytes(of: &s) { raw in
            if isIPv6 {
                // sin6_family (2), sin6_port (2), sin6_flowinfo (4), sin6_addr (16), sin6_scope_id (4)
                return [6] + Array(raw[2..<4]) + Array(raw[8..<24]) + Array(raw[24..<28])
            }
            return [4] + Array(raw[2..<8])
        }
    }

    public static func == (a: SocketAddress, b: SocketAddress) -> Bool {
        guard a.storage.ss_family == b.storage.ss_family else { return false }
        var x = a.storage, y = b.storage
        // Port and address (and scope id for IPv6); not the flow label.
        return withUnsafeBytes(of: &x) { p in
            withUnsafeBytes(of: &y) { q in
                if a.isIPv6 { return memcmp(p.baseAddress! + 2, q.baseAddress! + 2, 2) == 0 && memcmp(p.baseAddress! + 8, q.baseAddress! + 8, 20) == 0 }
                return memcmp(p.baseAddress! + 2, q.baseAddress! + 2, 6) == 0
            }
        }
    }

    public func hash(into hasher: inout Hasher) {
        var s = storage
        withUnsafeBytes(of: &s) { raw in
            if isIPv6 {
                hasher.combine(bytes: UnsafeRawBufferPointer(rebasing: raw[2..<4]))
                hasher.combine(bytes: UnsafeRawBufferPointer(rebasing: raw[8..<28]))
            } else {
                hasher.combine(bytes: UnsafeRawBufferPointer(rebasing: raw[2..<8]))
            }
        }
    }
}
