import DataStreamCore

extension Server.Configuration {
    /// A setting given as text, named as `datastream serve`'s flag without its dashes
    /// (`max-file-size`, `header-timeout`). The command line and the C API both set the
    /// configuration through here, so a value means the same and is range-checked the same
    /// wherever it is typed.
    public struct UnknownOption: Error, CustomStringConvertible {
        public let name: String
        public var description: String { "no option named '\(name)'" }
    }

    /// The names `set` takes.
    public static var optionNames: [String] { options.keys.sorted() }

    /// Sets the option `name` from `value`. `flag` is how the option is named in the message of
    /// a refused value (`--name` on the command line; `name` by default).
    public mutating func set(_ name: String, _ value: String, flag: String? = nil) throws {
        guard let option = Self.options[name] else { throw UnknownOption(name: name) }
        try option(&self, value, flag ?? name)
    }

    private typealias Setter = @Sendable (inout Server.Configuration, String, String) throws(FlagValue.Invalid) -> Void

    /// Every option, with its range.
    private static let options: [String: Setter] = {
        let longest = FlagValue.longestSeconds
        let bytesToInt: @Sendable (UInt64) -> Int = { Int(clamping: $0) }
        return [
            "host": { c, v, _ in c.host = v },
            "port": { c, v, f throws(FlagValue.Invalid) in c.port = try FlagValue.port(v, flag: f) },
            "dir": { c, v, _ in c.directory = v },
            "token": { c, v, _ in c.token = v },
            "proxy-protocol": { c, v, f throws(FlagValue.Invalid) in
                c.proxyProtocolFrom = try FlagValue.list(v, flag: f, expected: "numeric addresses or prefixes, comma-separated (127.0.0.1, 10.0.0.0/8, ::1)") {
                    Server.proxyPrefix($0) != nil
                }
            },
            "fsync": { c, v, f throws(FlagValue.Invalid) in c.fsync = try FlagValue.boolean(v, flag: f) },
            "max-file-size": { c, v, f throws(FlagValue.Invalid) in c.maxFileSize = try FlagValue.bytes(v, flag: f, in: 1...(1 << 60)) },
            "min-free-space": { c, v, f throws(FlagValue.Invalid) in c.minFreeSpace = try FlagValue.bytes(v, flag: f, in: 0...(1 << 60)) },
            "max-name-length": { c, v, f throws(FlagValue.Invalid) in c.maxNameLength = try FlagValue.integer(v, flag: f, in: 1...NamePolicy.defaultMaxLength) },
            "max-connections": { c, v, f throws(FlagValue.Invalid) in c.maxConnections = try FlagValue.integer(v, flag: f, in: 1...1_000_000) },
            "max-connections-per-address": { c, v, f throws(FlagValue.Invalid) in c.maxConnectionsPerAddress = try FlagValue.integer(v, flag: f, in: 0...1_000_000) },
            "partial-max-age": { c, v, f throws(FlagValue.Invalid) in c.partialMaxAge = try FlagValue.seconds(v, flag: f, in: 0...(100 * longest)) },
            "max-partials-per-address": { c, v, f throws(FlagValue.Invalid) in c.partialLimits.perAddress = try FlagValue.integer(v, flag: f, in: 0...10_000_000) },
            "max-partial-bytes-per-address": { c, v, f throws(FlagValue.Invalid) in c.partialLimits.bytesPerAddress = try FlagValue.bytes(v, flag: f, in: 0...(1 << 60)) },
            "max-partials": { c, v, f throws(FlagValue.Invalid) in c.partialLimits.total = try FlagValue.integer(v, flag: f, in: 0...10_000_000) },
            "max-partial-bytes": { c, v, f throws(FlagValue.Invalid) in c.partialLimits.totalBytes = try FlagValue.bytes(v, flag: f, in: 0...(1 << 60)) },
            "header-timeout": { c, v, f throws(FlagValue.Invalid) in c.headerTimeout = try FlagValue.seconds(v, flag: f, in: 0.001...longest) },
            "idle-timeout": { c, v, f throws(FlagValue.Invalid) in c.idleTimeout = try FlagValue.seconds(v, flag: f, in: 0.001...longest) },
            "allow-anonymous": { c, v, f throws(FlagValue.Invalid) in c.allowAnonymous = try FlagValue.boolean(v, flag: f) },
            "allow-seed-protocol": { c, v, f throws(FlagValue.Invalid) in c.allowSeedProtocol = try FlagValue.boolean(v, flag: f) },
            "udp": { c, v, f throws(FlagValue.Invalid) in c.udpEnabled = try FlagValue.boolean(v, flag: f) },
            "on-stored": { c, v, _ in c.onStored = v.isEmpty ? nil : v },
            "on-stored-limit": { c, v, f throws(FlagValue.Invalid) in c.onStoredLimit = try FlagValue.integer(v, flag: f, in: 1...256) },
            "on-stored-timeout": { c, v, f throws(FlagValue.Invalid) in c.onStoredTimeout = try FlagValue.seconds(v, flag: f, in: 0.001...longest) },
            "http": { c, v, f throws(FlagValue.Invalid) in c.httpEnabled = try FlagValue.boolean(v, flag: f) },
            "max-http-head": { c, v, f throws(FlagValue.Invalid) in c.maxHTTPHeadBytes = bytesToInt(try FlagValue.bytes(v, flag: f, in: 1024...(64 << 10))) },
            "udp-port": { c, v, f throws(FlagValue.Invalid) in c.udpPort = try FlagValue.port(v, flag: f) },
            "udp-receive-buffer": { c, v, f throws(FlagValue.Invalid) in c.udpReceiveBuffer = Int32(try FlagValue.bytes(v, flag: f, in: 4096...(1 << 30))) },
            "udp-idle-timeout": { c, v, f throws(FlagValue.Invalid) in c.udpIdleTimeout = try FlagValue.seconds(v, flag: f, in: 0.001...longest) },
            "udp-offload": { c, v, f throws(FlagValue.Invalid) in c.udpReceiveOffload = try FlagValue.boolean(v, flag: f) },
            "udp-max-sessions": { c, v, f throws(FlagValue.Invalid) in c.udpMaxSessions = try FlagValue.integer(v, flag: f, in: 1...65_536) },
            "udp-max-sessions-per-address": { c, v, f throws(FlagValue.Invalid) in c.udpMaxSessionsPerAddress = try FlagValue.integer(v, flag: f, in: 1...65_536) },
            "udp-max-seed-sessions": { c, v, f throws(FlagValue.Invalid) in c.udpMaxSeedSessions = try FlagValue.integer(v, flag: f, in: 0...65_536) },
            "udp-max-seed-sessions-per-address": { c, v, f throws(FlagValue.Invalid) in c.udpMaxSeedSessionsPerAddress = try FlagValue.integer(v, flag: f, in: 0...65_536) },
            "udp-window": { c, v, f throws(FlagValue.Invalid) in c.udpWindowBytes = bytesToInt(try FlagValue.bytes(v, flag: f, in: (64 << 10)...(1 << 30))) },
            // At least one window (checked against the window set so far: set the window first).
            "udp-memory": { c, v, f throws(FlagValue.Invalid) in c.udpMemoryBudget = bytesToInt(try FlagValue.bytes(v, flag: f, in: UInt64(c.udpWindowBytes)...(1 << 40))) },
        ]
    }()
}
