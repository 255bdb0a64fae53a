// The C API of include/datastream.h: each exported function checks its arguments and the
// handle's lifecycle (`HostedServerLifecycle`), then calls the Swift server. Nothing here
// decides anything about uploads. Every error becomes a status and a message
// (`ds_last_error`); nothing traps on a caller's mistake.
import CDataStreamHeader
import DataStream
import DataStreamCore
import Glibc
import Logging
import UV

// MARK: - Errors

/// The last error message of each thread (`ds_last_error`), malloc'd.
private let lastErrorKey: pthread_key_t = {
    var key = pthread_key_t()
    pthread_key_create(&key) { free($0) }
    return key
}()

private func fail(_ status: ds_status, _ message: String) -> Int32 {
    free(pthread_getspecific(lastErrorKey))
    pthread_setspecific(lastErrorKey, strdup(message))
    return status.rawValue
}

private func succeed() -> Int32 {
    free(pthread_getspecific(lastErrorKey))
    pthread_setspecific(lastErrorKey, nil)
    return DS_OK.rawValue
}

private let emptyMessage: StaticString = ""

@_cdecl("ds_last_error")
public func dsLastError() -> UnsafePointer<CChar> {
    if let message = pthread_getspecific(lastErrorKey) { return UnsafePointer(message.assumingMemoryBound(to: CChar.self)) }
    return UnsafeRawPointer(emptyMessage.utf8Start).assumingMemoryBound(to: CChar.self)
}

// MARK: - Configuration

/// What a `ds_config` holds: the settings and the host's callbacks. A value: the server takes
/// its own copy, so the host may change or free the config afterwards.
struct HostSettings {
    var server = Server.Configuration()
    var onEvent: ds_event_cb?
    var eventUserData: UnsafeMutableRawPointer?
    var onLog: ds_log_cb?
    var logLevel = DS_LOG_INFO
    var logUserData: UnsafeMutableRawPointer?
}

/// A `ds_config` handle.
final class HostConfiguration {
    var settings = HostSettings()
}

private func configuration(_ handle: OpaquePointer?) -> HostConfiguration? {
    handle.map { Unmanaged<HostConfiguration>.fromOpaque(UnsafeRawPointer($0)).takeUnretainedValue() }
}

@_cdecl("ds_config_new")
public func dsConfigNew() -> OpaquePointer? {
    OpaquePointer(Unmanaged.passRetained(HostConfiguration()).toOpaque())
}

@_cdecl("ds_config_free")
public func dsConfigFree(_ handle: OpaquePointer?) {
    guard let handle else { return }
    Unmanaged<HostConfiguration>.fromOpaque(UnsafeRawPointer(handle)).release()
}

@_cdecl("ds_config_set")
public func dsConfigSet(_ handle: OpaquePointer?, _ name: UnsafePointer<CChar>?, _ value: UnsafePointer<CChar>?) -> Int32 {
    guard let config = configuration(handle) else { return fail(DS_ERR_INVALID, "ds_config_set: the config is NULL") }
    guard let name, let value else { return fail(DS_ERR_INVALID, "ds_config_set: the name or the value is NULL") }
    do {
        try config.settings.server.set(String(cString: name), String(cString: value))
    } catch {
        return fail(DS_ERR_INVALID, "ds_config_set: \(error)")
    }
    return succeed()
}

@_cdecl("ds_config_set_host")
public func dsConfigSetHost(_ handle: OpaquePointer?, _ host: UnsafePointer<CChar>?) -> Int32 {
    dsConfigSet(handle, "host", host)
}

@_cdecl("ds_config_set_port")
public func dsConfigSetPort(_ handle: OpaquePointer?, _ port: Int32) -> Int32 {
    dsConfigSet(handle, "port", String(port))
}

@_cdecl("ds_config_set_directory")
public func dsConfigSetDirectory(_ handle: OpaquePointer?, _ path: UnsafePointer<CChar>?) -> Int32 {
    dsConfigSet(handle, "dir", path)
}

@_cdecl("ds_config_set_token")
public func dsConfigSetToken(_ handle: OpaquePointer?, _ token: UnsafePointer<CChar>?) -> Int32 {
    guard let config = configuration(handle) else { return fail(DS_ERR_INVALID, "ds_config_set_token: the config is NULL") }
    config.settings.server.token = token.map { String(cString: $0) }
    return succeed()
}

@_cdecl("ds_config_set_event_callback")
public func dsConfigSetEventCallback(_ handle: OpaquePointer?, _ callback: ds_event_cb?, _ userData: UnsafeMutableRawPointer?) -> Int32 {
    guard let config = configuration(handle) else { return fail(DS_ERR_INVALID, "ds_config_set_event_callback: the config is NULL") }
    config.settings.onEvent = callback
    config.settings.eventUserData = userData
    return succeed()
}

@_cdecl("ds_config_set_log_callback")
public func dsConfigSetLogCallback(_ handle: OpaquePointer?, _ callback: ds_log_cb?, _ level: ds_log_level, _ userData: UnsafeMutableRawPointer?) -> Int32 {
    guard let config = configuration(handle) else { return fail(DS_ERR_INVALID, "ds_config_set_log_callback: the config is NULL") }
    guard (DS_LOG_TRACE.rawValue...DS_LOG_CRITICAL.rawValue).contains(level.rawValue) else {
        return fail(DS_ERR_INVALID, "ds_config_set_log_callback: level must be DS_LOG_TRACE to DS_LOG_CRITICAL, got \(level.rawValue)")
    }
    config.settings.onLog = callback
    config.settings.logLevel = level
    config.settings.logUserData = userData
    return succeed()
}

// MARK: - The server

/// A `ds_server`: the Swift server on the host's loop, its lifecycle and the host's callbacks.
/// Retained by the handle from `ds_server_new` until `ds_server_free`.
final class HostedServer {
    let server: Server
    let configuration: HostSettings
    var lifecycle = HostedServerLifecycle()
    var tcpPort: Int32 = 0

    init(server: Server, configuration: HostSettings) {
        self.server = server
        self.configuration = configuration
    }

    var handle: OpaquePointer { OpaquePointer(Unmanaged.passUnretained(self).toOpaque()) }

    /// Hands an event to the host's callback, its strings alive for the call.
    func deliver(_ event: UploadEvent) {
        guard let callback = configuration.onEvent else { return }
        var strings: [UnsafeMutablePointer<CChar>] = []
        defer { strings.forEach { free($0) } }
        func c(_ s: String?) -> UnsafePointer<CChar>? {
            guard let s, let p = strdup(s) else { return nil }
            strings.append(p)
            return UnsafePointer(p)
        }
        var e = ds_event()
        e.struct_size = MemoryLayout<ds_event>.size
        let upload: UploadDescription
        switch event {
        case .started(let u):
            e.kind = DS_EVENT_STARTED
            upload = u
        case .stored(let s):
            e.kind = DS_EVENT_STORED
            upload = s.upload
            e.stored_name = c(s.storedName)
            e.path = c(s.path)
            e.digest_hex = s.digest.isEmpty ? nil : c(s.digest.hexString)
            e.digest_algorithm = c(s.digestAlgorithm)
        case .failed(let u, let reason, let code, let resumable):
            e.kind = DS_EVENT_FAILED
            upload = u
            e.reason = c(reason)
            e.code = Int32(code)
            e.resumable = resumable ? 1 : 0
        }
        e.transport = ds_transport(UInt32(upload.transport.rawValue))
        e.peer = c(upload.peer)
        e.client_name = c(upload.clientName)
        e.upload_id = c(upload.uploadID)
        e.size = upload.size
        callback(&e, configuration.eventUserData)
    }
}

private func hosted(_ handle: OpaquePointer?) -> HostedServer? {
    handle.map { Unmanaged<HostedServer>.fromOpaque(UnsafeRawPointer($0)).takeUnretainedValue() }
}

/// Log lines to the host's callback. Unchecked: `userData` is the host's, only handed back, and
/// every line is logged on the loop thread.
struct HostLogHandler: LogHandler, @unchecked Sendable {
    let callback: ds_log_cb
    let userData: UnsafeMutableRawPointer?
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let all = metadata.merging(event.metadata ?? [:]) { $1 }
        let fields = all.isEmpty ? "" : " " + all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        "\(event.message)\(fields)".withCString { callback(ds_log_level(UInt32(event.level.hostLevel)), $0, userData) }
    }
}

extension Logger.Level {
    private static let order: [Logger.Level] = [.trace, .debug, .info, .notice, .warning, .error, .critical]
    var hostLevel: Int { Self.order.firstIndex(of: self)! }
    init(hostLevel: Int) { self = Self.order[max(0, min(Self.order.count - 1, hostLevel))] }
}

@_cdecl("ds_server_new")
public func dsServerNew(_ loop: UnsafeMutableRawPointer?, _ configHandle: OpaquePointer?, _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guard let loop else { return fail(DS_ERR_INVALID, "ds_server_new: the loop is NULL") }
    guard let config = configuration(configHandle)?.settings else { return fail(DS_ERR_INVALID, "ds_server_new: the config is NULL") }
    guard let out else { return fail(DS_ERR_INVALID, "ds_server_new: out is NULL") }
    out.pointee = nil
    let logger: Logger
    if let callback = config.onLog {
        let level = Logger.Level(hostLevel: Int(config.logLevel.rawValue))
        logger = Logger(label: "datastream") { _ in HostLogHandler(callback: callback, userData: config.logUserData, logLevel: level) }
    } else {
        logger = Logger(label: "datastream") { _ in SwiftLogNoOpLogHandler() }
    }
    let server: Server
    do {
        server = try Server(loop: Loop(borrowing: loop), configuration: config.server, logger: logger)
    } catch {
        switch error {
        case .directory: return fail(DS_ERR_DIRECTORY, "ds_server_new: \(error)")
        default: return fail(DS_ERR_INVALID, "ds_server_new: \(error)")
        }
    }
    let hosted = HostedServer(server: server, configuration: config)
    if config.onEvent != nil {
        server.onEvent = { [unowned hosted] in hosted.deliver($0) }
    }
    out.pointee = OpaquePointer(Unmanaged.passRetained(hosted).toOpaque())
    return succeed()
}

@_cdecl("ds_server_start")
public func dsServerStart(_ handle: OpaquePointer?) -> Int32 {
    guard let hosted = hosted(handle) else { return fail(DS_ERR_INVALID, "ds_server_start: the server is NULL") }
    if let refusal = hosted.lifecycle.start() { return fail(DS_ERR_STATE, "ds_server_start: \(refusal)") }
    do {
        hosted.tcpPort = Int32(try hosted.server.start().port)
    } catch {
        hosted.lifecycle.startFailed()
        return fail(DS_ERR_LISTEN, "ds_server_start: \(error)")
    }
    return succeed()
}

@_cdecl("ds_server_tcp_port")
public func dsServerTCPPort(_ handle: OpaquePointer?) -> Int32 {
    hosted(handle)?.tcpPort ?? 0
}

@_cdecl("ds_server_udp_port")
public func dsServerUDPPort(_ handle: OpaquePointer?) -> Int32 {
    guard let hosted = hosted(handle), hosted.lifecycle.isRunning else { return 0 }
    return Int32(hosted.server.udpAddress?.port ?? 0)
}

@_cdecl("ds_server_stop")
public func dsServerStop(_ handle: OpaquePointer?, _ callback: ds_stopped_cb?, _ userData: UnsafeMutableRawPointer?) -> Int32 {
    guard let hosted = hosted(handle) else { return fail(DS_ERR_INVALID, "ds_server_stop: the server is NULL") }
    switch hosted.lifecycle.stop() {
    case .failure(let refusal):
        return fail(DS_ERR_STATE, "ds_server_stop: \(refusal)")
    case .success(.callBackNow):
        callback?(handle, userData)
    case .success(.stopServer):
        hosted.server.stop { [hosted] in
            hosted.lifecycle.stopped()
            callback?(hosted.handle, userData)
        }
    }
    return succeed()
}

@_cdecl("ds_server_drain")
public func dsServerDrain(_ handle: OpaquePointer?, _ deadline: Double, _ callback: ds_drained_cb?, _ userData: UnsafeMutableRawPointer?) -> Int32 {
    guard let hosted = hosted(handle) else { return fail(DS_ERR_INVALID, "ds_server_drain: the server is NULL") }
    do {
        _ = try FlagValue.seconds(String(deadline), flag: "deadline_seconds", in: 0...FlagValue.longestSeconds)
    } catch {
        return fail(DS_ERR_INVALID, "ds_server_drain: \(error)")
    }
    switch hosted.lifecycle.stop() {
    case .failure(let refusal):
        return fail(DS_ERR_STATE, "ds_server_drain: \(refusal)")
    case .success(.callBackNow):
        var outcome = ds_drain_outcome()
        outcome.struct_size = MemoryLayout<ds_drain_outcome>.size
        callback?(handle, &outcome, userData)
    case .success(.stopServer):
        hosted.server.drain(deadline: deadline) { [hosted] d in
            hosted.lifecycle.stopped()
            var outcome = ds_drain_outcome(struct_size: MemoryLayout<ds_drain_outcome>.size, in_progress_at_start: UInt64(d.inProgressAtStart),
                                           stored_while_draining: d.storedWhileDraining, cut_resumable: UInt64(d.cutResumable), cut_lost: UInt64(d.cutLost))
            callback?(hosted.handle, &outcome, userData)
        }
    }
    return succeed()
}

@_cdecl("ds_server_statistics")
public func dsServerStatistics(_ handle: OpaquePointer?, _ out: UnsafeMutableRawPointer?, _ size: Int) -> Int32 {
    guard let hosted = hosted(handle) else { return fail(DS_ERR_INVALID, "ds_server_statistics: the server is NULL") }
    guard let out else { return fail(DS_ERR_INVALID, "ds_server_statistics: out is NULL") }
    let s = hosted.server.statistics
    var c = ds_statistics()
    c.connections_accepted = s.connectionsAccepted
    c.connections_open = UInt64(hosted.server.connectionCount)
    c.uploads_stored = s.uploadsStored
    c.uploads_already_stored = s.uploadsAlreadyStored
    c.uploads_failed = s.uploadsFailed
    c.bytes_received = s.bytesReceived
    c.connections_refused = s.connectionsRefused
    c.connections_timed_out = s.connectionsTimedOut
    c.authentication_failures = s.authenticationFailures
    c.udp_sessions_open = UInt64(hosted.server.udpSessionCount)
    c.udp_datagrams_received = s.udpDatagramsReceived
    let known = MemoryLayout<ds_statistics>.size
    memset(out, 0, size)
    withUnsafeBytes(of: &c) { _ = memcpy(out, $0.baseAddress!, min(size, known)) }
    return succeed()
}

@_cdecl("ds_server_free")
public func dsServerFree(_ handle: OpaquePointer?) -> Int32 {
    guard let handle, let hosted = hosted(handle) else { return succeed() }
    if let refusal = hosted.lifecycle.free() { return fail(DS_ERR_STATE, "ds_server_free: \(refusal)") }
    hosted.server.onEvent = nil
    Unmanaged<HostedServer>.fromOpaque(UnsafeRawPointer(handle)).release()
    return succeed()
}
