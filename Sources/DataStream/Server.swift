import DataStreamCore
import Glibc
import Logging
import UV

/// The receiver: a TCP listener on a loop, the connections it accepted, the store and the
/// process-wide buffer pool. Owned by its creator (the command line, a test, or an embedding
/// tool); everything runs on the loop's thread. `stop` closes the listener and every connection
/// (native partials are kept for resume) and calls back once all handles are closed.
///
/// Counters touched per connection are `@exclusivity(unchecked)` (no run-time access check):
/// plain values only ever read or assigned in place, under the rule written on `Connection`.
public final class Server {
    public let loop: Loop
    public let configuration: Configuration
    let store: Store
    @exclusivity(unchecked) public internal(set) var statistics = Statistics()
    /// Called on the loop thread when an upload starts, is stored or fails (`UploadEvent`).
    /// Set it before `start`, or at any time on the loop thread.
    public var onEvent: ((UploadEvent) -> Void)?
    let logger: Logger
    /// `logger.logLevel`, read once: connections check it before every debug line, and the
    /// logger's handler answers through an existential each time.
    let logLevel: Logger.Level
    let pool: BufferPool
    let machineConfiguration: ConnectionStateMachine.Configuration
    let lifecycleConfiguration: ConnectionLifecycle.Configuration
    let httpConfiguration: HTTPConnectionMachine.Configuration
    let webSocketConfiguration: WebSocketUploadMachine.Configuration
    /// What `/metrics` shows (see `Server+Metrics.swift`).
    let metrics: ServerMetrics
    /// Runs `--on-stored` for every stored upload (nil without it).
    private(set) var hook: CompletionHook? = nil
    /// Read on every accept and every close. Unchecked (see `Connection`): assigned whole, at
    /// start and stop; releasing a listener runs no code that reads it.
    @exclusivity(unchecked) var listener: TCPListener?
    var udp: UDPReceiver?
    /// The bound UDP address, once started with UDP enabled.
    public private(set) var udpAddress: SocketAddress?
    /// The UDP receive buffer the kernel granted (getsockopt's figure, twice the usable bytes).
    public var udpReceiveBufferGranted: Int32 { udp?.grantedReceiveBuffer ?? 0 }
    /// Whether the kernel accepted UDP receive offload on the socket.
    public var udpReceiveOffloadEnabled: Bool { udp?.receiveOffload ?? false }
    /// Connections whose upload is being drained straight from the socket (`SocketDrain`).
    @exclusivity(unchecked) var drainsRunning = 0
    /// Bytes of the blocks holding small seed uploads in memory (see `smallUploadBudget`).
    @exclusivity(unchecked) var smallUploadBytesInUse = 0
    /// Blocks for small seed uploads, reused (see `SmallBuffers`).
    let smallBuffers = SmallBuffers()
    /// Open connections.
    let connections = ConnectionTable()
    @exclusivity(unchecked) private var nextConnectionID: UInt64 = 0
    private var stopCallback: (() -> Void)?
    var listenerClosed = true
    private var udpClosed = true
    private var hookClosed = true

    /// Prepares the target directory (created if missing; an error if unusable).
    public init(loop: Loop, configuration: Configuration, logger: Logger = Logger(label: "datastream")) throws(ServerError) {
        self.loop = loop
        self.configuration = configuration
        self.logger = logger
        self.logLevel = logger.logLevel
        do {
            store = try Store(directory: configuration.directory, fsync: configuration.fsync, loop: loop)
            store.unnamedSeedFiles = configuration.unnamedSeedFiles
        } catch {
            throw .directory(path: error.path, reason: error.reason)
        }
        partialSweep = store.sweepPartials(maxAge: configuration.partialMaxAge, limits: configuration.partialLimits)
        if partialSweep.seedRemoved + partialSweep.staleRemoved + partialSweep.receiptsRemoved > 0 || partialSweep.kept > 0 {
            logger.notice("partials at start: \(partialSweep.kept) kept for resume (\(partialSweep.inUse) being written by another process), \(partialSweep.staleRemoved) stale removed (older than \(configuration.partialMaxAge) s or incomplete), \(partialSweep.seedRemoved) seed partials nobody holds removed, \(partialSweep.receiptsRemoved) receipts of stored uploads removed (older than \(configuration.partialMaxAge) s)")
        }
        proxyPrefixes = configuration.proxyProtocolFrom.compactMap(Server.proxyPrefix)
        disk = DiskBudget(directory: configuration.directory, minimumFree: configuration.minFreeSpace, sharedFile: configuration.directory + "/.datastream/budget")
        if !disk.isShared { logger.warning("cannot share the disk budget through \(configuration.directory)/.datastream/budget: other processes on this directory are not counted") }
        pool = BufferPool(budget: configuration.processBufferBudget)  // 512 KiB slabs, reads of up to 256 KiB (fewer read calls for a fast sender)
        seedProtocolAllowed = configuration.allowSeedProtocol || Server.isLoopback(configuration.host)
        machineConfiguration = .init(token: configuration.token, maxFileSize: configuration.maxFileSize,
                                     maxNameLength: configuration.maxNameLength, seedProtocolAllowed: seedProtocolAllowed,
                                     httpAllowed: configuration.httpEnabled)
        httpConfiguration = .init(maxFileSize: configuration.maxFileSize, maxNameLength: configuration.maxNameLength,
                                  headTimeout: TimeLimit.units(configuration.headerTimeout, perSecond: 1e9) ?? .max,
                                  idleTimeout: TimeLimit.units(configuration.idleTimeout, perSecond: 1e9) ?? .max,
                                  token: configuration.token)
        webSocketConfiguration = .init(token: configuration.token, maxFileSize: configuration.maxFileSize, maxNameLength: configuration.maxNameLength,
                                       idleTimeout: TimeLimit.units(configuration.idleTimeout, perSecond: 1e9) ?? .max)
        metrics = ServerMetrics()
        lifecycleConfiguration = .init(headerTimeout: configuration.headerTimeout, idleTimeout: configuration.idleTimeout,
                                       smallUploadBudget: configuration.smallUploadBudget)
        if let cap = configuration.maxConnections {
            maxConnections = max(1, cap)
        } else {
            var limit = rlimit()
            getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
            // A connection with an upload in progress holds its socket and its file.
            maxConnections = max(16, (Int(clamping: min(limit.rlim_cur, 1 << 24)) - 128) / 2)
        }
        if let command = configuration.onStored {
            hook = CompletionHook(command: command, limit: configuration.onStoredLimit, timeout: configuration.onStoredTimeout, server: self)
        }
    }

    /// Whether `host` is a loopback address (127.0.0.0/8, ::1, localhost).
    static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host.hasPrefix("127.") || host == "::1" || host == "[::1]"
    }

    /// What the start-up sweep of partial files did.
    let partialSweep: Store.PartialSweep
    /// Free space accounting for uploads starting (see `Configuration.minFreeSpace`).
    let disk: DiskBudget
    /// Whether seed-framed uploads are accepted here (see `Configuration.allowSeedProtocol`).
    let seedProtocolAllowed: Bool
    /// The connection cap in effect (see `Configuration.maxConnections`).
    public let maxConnections: Int
    private var connectionsPerHost: [[UInt8]: Int] = [:]
    /// Addresses that keep failing authentication, and how long each must wait.
    private var authenticationBackoff = AuthenticationBackoff()
    /// Kinds of log line a hostile client can make the server write at will: rate-limited.
    private var noisyLines = LogRateLimit<NoisyLine>()
    /// Connections refused at accept, waiting for their first byte (see `RefusedConnection`).
    private var refusing: [ObjectIdentifier: RefusedConnection] = [:]
    /// The most refused connections kept waiting at once; past it they are closed at once.
    static let maxRefusing = 256
    private var sweepTimer: Timer?
    /// `--proxy-protocol`: the proxies allowed to send PROXY headers, and the connections from
    /// them whose header is being read.
    let proxyPrefixes: [ProxyProtocol.Prefix]
    private var proxyReaders: [ObjectIdentifier: ProxyHeaderReader] = [:]
    /// Where this worker of `serve --workers` publishes its numbers (nil: a server on its own).
    private(set) var workerShare: WorkerShare?
    var descriptorRetryTimer: Timer?
    /// Connections that may read again, served at the start of the next loop iteration (`readSoon`).
    private var readSoonQueue: [Connection] = []
    private var readSoonIdle: Idle?

    /// Binds and listens; returns the bound address (with the real port when `port` is 0).
    /// Sets SIGPIPE to be ignored process-wide (`ignoreBrokenPipes`): a client closing first
    /// must end its connection, not the receiver.
    @discardableResult
    public func start() throws(ServerError) -> SocketAddress {
        ignoreBrokenPipes()
        if !Server.isLoopback(configuration.host), configuration.token == nil, !configuration.allowAnonymous {
            throw .anonymousNonLoopback(host: configuration.host)
        }
        do {
            return try startHandles()
        } catch {
            // Nothing stays open on the loop after a failed start (its owner may close the loop).
            sweepTimer?.close()
            sweepTimer = nil
            readSoonIdle?.close()
            readSoonIdle = nil
            throw error
        }
    }

    private func startHandles() throws(ServerError) -> SocketAddress {
        do throws(UVOperationError) {
            if let place = configuration.workerSlot {
                let share = try WorkerShare(place)
                workerShare = share
                metrics.share = share
            }
            let t = try Timer(loop: loop)
            // A tenth of the shorter timeout, between 50 ms and a second (a limit that is not a
            // finite positive number counts as none).
            let shorter = min(TimeLimit.units(configuration.headerTimeout, perSecond: 100) ?? 1000, TimeLimit.units(configuration.idleTimeout, perSecond: 100) ?? 1000)
            let every = max(50, min(1000, shorter))
            try t.start(timeout: every, repeat: every) { [unowned self] in sweep() }
            t.unref()  // the sweep alone does not keep the loop running
            sweepTimer = t
            readSoonIdle = try Idle(loop: loop)
        } catch {
            throw .listen(host: configuration.host, port: configuration.port, error)
        }
        // With an ephemeral TCP port and UDP on the same number, that number may be taken for
        // UDP: try a few ephemeral ports before giving up.
        var attempt = 0
        while true {
            attempt += 1
            let bound = try startTCP()
            guard configuration.udpEnabled else { return bound }
            let port = configuration.udpPort ?? bound.port
            do throws(UVOperationError) {
                try startUDP(try SocketAddress.resolve(configuration.host, port: port, on: loop))
                return bound
            } catch {
                if let listener {
                    self.listener = nil
                    listener.close()
                    listenerClosed = true
                }
                let retry = error.error == .addressInUse && configuration.port == 0 && configuration.udpPort == nil && attempt < 20
                if !retry { throw .listenUDP(host: configuration.host, port: port, error) }
            }
        }
    }

    private func startTCP() throws(ServerError) -> SocketAddress {
        do throws(UVOperationError) {
            let address = try SocketAddress.resolve(configuration.host, port: configuration.port, on: loop)
            let listener = try TCPListener(loop: loop)
            do throws(UVOperationError) {
                if configuration.sharedPorts { try listener.bindShared(address) } else { try listener.bind(address) }
                try listener.listen(backlog: configuration.backlog) { [unowned self] result in accept(result) }
            } catch {
                listener.close()
                throw error
            }
            self.listener = listener
            listenerClosed = false
            return try listener.localAddress()
        } catch {
            throw .listen(host: configuration.host, port: configuration.port, error)
        }
    }

    private func startUDP(_ address: SocketAddress) throws(UVOperationError) {
        var limits = UDPReceiver.Limits()
        limits.idleTimeout = configuration.udpIdleTimeout
        var admission = UDPAdmission.Limits()
        admission.windowBytes = configuration.udpWindowBytes
        admission.memoryBudget = configuration.udpMemoryBudget
        admission.maxSessions = configuration.udpMaxSessions
        admission.maxSessionsPerAddress = configuration.udpMaxSessionsPerAddress
        admission.maxSeedSessions = configuration.udpMaxSeedSessions
        admission.maxSeedSessionsPerAddress = configuration.udpMaxSeedSessionsPerAddress
        admission.maxFileSize = configuration.maxFileSize
        admission.seedProtocolAllowed = seedProtocolAllowed
        admission.token = configuration.token
        let receiver = try UDPReceiver(server: self, address: address, receiveBufferBytes: configuration.udpReceiveBuffer,
                                   receiveOffload: configuration.udpReceiveOffload, limits: limits, admission: admission,
                                   sharedPort: configuration.sharedPorts, cookieSecret: configuration.udpCookieSecret)
        udp = receiver
        udpClosed = false
        do throws(UVOperationError) {
            try receiver.start()
            udpAddress = try receiver.localAddress()
        } catch {
            udp = nil
            receiver.stop { [self] in udpClosed = true }
            throw error
        }
    }

    /// UDP sessions open now (seed and native, including finished ones still lingering).
    public var udpSessionCount: Int { udp?.sessionCount ?? 0 }

    /// The connections open now.
    public var connectionCount: Int { connections.count }

    /// Stops accepting, ends every connection (native partials stay resumable) and calls
    /// `completion` once every handle of the server is closed. Called again before that, it
    /// calls back both, in order; called after, it calls back at once.
    public func stop(_ completion: @escaping () -> Void = {}) {
        if let earlier = stopCallback {
            stopCallback = { earlier(); completion() }
        } else {
            stopCallback = completion
        }
        sweepTimer?.close()
        sweepTimer = nil
        readSoonIdle?.close()
        readSoonIdle = nil
        readSoonQueue.removeAll()
        descriptorRetryTimer?.close()
        descriptorRetryTimer = nil
        if let listener {
            self.listener = nil
            listener.close { [self] in
                listenerClosed = true
                finishStopIfDone()
            }
        }
        if let udp {
            self.udp = nil
            udp.stop { [self] in
                udpClosed = true
                finishStopIfDone()
            }
        }
        for connection in connections { connection.abort() }
        for refusal in refusing.values { refusal.cancel() }
        for reader in proxyReaders.values { reader.cancel() }
        if let hook {
            hookClosed = false
            hook.stop { [self] in
                hookClosed = true
                finishStopIfDone()
            }
        }
        finishStopIfDone()
    }

    private func accept(_ result: Result<TCPStream, UVOperationError>) {
        switch result {
        case .failure(let error):
            statistics.acceptErrors += 1
            if error.error == .tooManyOpenFiles || error.error == .tooManyOpenFilesInSystem {
                pauseForDescriptors(error)
            } else {
                logger.error("accept failed: \(error)")
            }
        case .success(let stream):
            nextConnectionID += 1
            statistics.connectionsAccepted += 1
            if !proxyPrefixes.isEmpty {
                // Behind a proxy: from an allowed one the PROXY header comes first, and names
                // the client the connection is admitted as.
                guard let proxy = try? stream.peerAddress() else { stream.close(); return }
                if proxyPrefixes.contains(where: { $0.contains(proxy.addressBytes) }) {
                    let reader = ProxyHeaderReader(server: self, stream: stream, proxy: proxy)
                    proxyReaders[ObjectIdentifier(reader)] = reader
                    reader.start(timeout: configuration.headerTimeout)
                    return
                }
                admit(stream, peer: proxy, refusingProxyHeaders: true)
                return
            }
            admit(stream, peer: nil, refusingProxyHeaders: false)
        }
    }

    /// A PROXY header named the client of `stream`: admitted as coming from it.
    func proxyHeaderRead(_ reader: ProxyHeaderReader, stream: TCPStream, client: SocketAddress) {
        proxyReaders[ObjectIdentifier(reader)] = nil
        admit(stream, peer: client, refusingProxyHeaders: false)
    }

    /// A connection from an allowed proxy sent no usable PROXY header (the reader closed it).
    func proxyHeaderFailed(_ reader: ProxyHeaderReader, reason: String) {
        proxyReaders[ObjectIdentifier(reader)] = nil
        statistics.connectionsRefused += 1
        noisy(.connectionRefused, .warning, "connection refused: \(reason)", metadata: ["peer": "\(reader.proxy)"])
        finishStopIfDone()
    }

    /// The numeric address or prefix of `--proxy-protocol` (`10.0.0.0/8`, `::1`), or nil.
    static func proxyPrefix(_ text: String) -> ProxyProtocol.Prefix? {
        let parts = text.split(separator: "/", maxSplits: 1).map(String.init)
        guard let first = parts.first, let address = try? SocketAddress(host: first, port: 0) else { return nil }
        let bytes = address.addressBytes
        guard parts.count == 2 else { return ProxyProtocol.Prefix(address: bytes, bits: bytes.count * 8) }
        guard let bits = Int(parts[1]), (0...bytes.count * 8).contains(bits) else { return nil }
        return ProxyProtocol.Prefix(address: bytes, bits: bits)
    }

    /// Takes a connection in: the per-address cap and the authentication backoff by `peer` (the
    /// client's address, told by a proxy; nil: looked up if a check needs it), then a
    /// `Connection` (which refuses a PROXY header from `peer` when `refusingProxyHeaders`).
    private func admit(_ stream: TCPStream, peer given: SocketAddress?, refusingProxyHeaders: Bool) {
        // The peer is looked up only for the per-address cap and the authentication
        // backoff (log lines look it up themselves).
        let backoff = configuration.token != nil && authenticationBackoff.count > 0
        let peer = given ?? (configuration.maxConnectionsPerAddress > 0 || backoff ? try? stream.peerAddress() : nil)
        if let peer {
            let key = peer.hostIdentityBytes
            var refusal: ProtocolError?
            if configuration.maxConnectionsPerAddress > 0, connectionsPerHost[key, default: 0] >= configuration.maxConnectionsPerAddress {
                refusal = .tooManyConnections(limit: configuration.maxConnectionsPerAddress)
            } else if backoff, let wait = authenticationBackoff.wait(for: key, now: monotonicNanoseconds()) {
                refusal = .serverBusy(reason: "too many failed authentications from this address; try again in \((wait + 999_999_999) / 1_000_000_000) s")
            }
            if let refusal {
                refuse(stream, peer: peer, refusal)
                return
            }
            if configuration.maxConnectionsPerAddress > 0 { connectionsPerHost[key, default: 0] += 1 }
        }
        let connection = Connection(id: nextConnectionID, server: self, stream: stream, acceptedPeer: peer)
        connection.refusesProxyHeaders = refusingProxyHeaders
        connections.insert(connection)
        if connections.count >= maxConnections, let listener, !listener.isAcceptingPaused {
            listener.pauseAccepting()
            statistics.acceptPauses += 1
            logger.warning("at the connection cap (\(maxConnections)): accepting paused until one closes")
        }
        connection.start()
    }

    /// `connection` may read again (a receive buffer came back to the pool): it reads straight
    /// from its socket at the start of the next loop iteration (`Connection.readWithoutPolling`),
    /// outside every libuv callback (the pool hands out buffers one read at a time, so no read
    /// may start while another is being served). False if the server cannot (stopping, or the
    /// idle handle failed): the caller then lets the loop poll the socket.
    func readSoon(_ connection: Connection) -> Bool {
        guard let idle = readSoonIdle else { return false }
        if !idle.isActive {
            do throws(UVOperationError) { try idle.start { [unowned self] in readQueued() } } catch {
                logger.error("cannot schedule reads: \(error)")
                return false
            }
        }
        readSoonQueue.append(connection)
        return true
    }

    private func readQueued() {
        // Reads made here may wake more connections (a read served while others wait): they
        // are appended and served in this same pass.
        var i = 0
        while i < readSoonQueue.count {
            if readSoonQueue[i].readWithoutPolling() > 0 { statistics.readsAfterBufferWait += 1 }
            i += 1
        }
        readSoonQueue.removeAll(keepingCapacity: true)
        readSoonIdle?.stop()
    }

    /// Refuses a connection at accept. The reply waits for the client's first byte: a seed
    /// client gets none.
    private func refuse(_ stream: TCPStream, peer: SocketAddress, _ error: ProtocolError) {
        statistics.connectionsRefused += 1
        noisy(.connectionRefused, .warning, "connection refused: \(error)", metadata: ["peer": "\(peer)"])
        guard refusing.count < Self.maxRefusing else { stream.close(); return }
        let refusal = RefusedConnection(stream: stream, error: error, server: self)
        refusing[ObjectIdentifier(refusal)] = refusal
        refusal.start(timeout: configuration.headerTimeout)
    }

    /// A client at `peer` failed to authenticate: its address waits longer before the next try.
    func authenticationFailed(from peer: SocketAddress?) {
        statistics.authenticationFailures += 1
        if let peer { authenticationBackoff.failed(peer.hostIdentityBytes, now: monotonicNanoseconds()) }
        noisy(.authenticationFailed, .warning, "connection refused: authentication failed", metadata: ["peer": "\(peer.map { "\($0)" } ?? "?")"])
    }

    /// Writes a line of a kind a hostile client can provoke at will, within the rate limit; the
    /// first line after a suppressed run says how many were left out.
    func noisy(_ kind: NoisyLine, _ level: Logger.Level, _ message: @autoclosure () -> String, metadata: @autoclosure () -> Logger.Metadata? = nil) {
        guard logLevel <= level else { return }
        switch noisyLines.line(kind, now: monotonicNanoseconds()) {
        case .suppress:
            return
        case .write(let suppressed):
            let note = suppressed > 0 ? " (\(suppressed) similar lines suppressed)" : ""
            logger.log(level: level, "\(message())\(note)", metadata: metadata())
        }
    }

    /// A refused connection's stream is closed: it is let go.
    func refusalEnded(_ refusal: RefusedConnection) {
        refusing[ObjectIdentifier(refusal)] = nil
        finishStopIfDone()
    }

    func connectionClosed(_ connection: ServedConnection) {
        guard connections.remove(connection) != nil else { return }
        if configuration.maxConnectionsPerAddress > 0, let peer = connection.acceptedPeer {
            let key = peer.hostIdentityBytes
            connectionsPerHost[key, default: 1] -= 1
            if connectionsPerHost[key] == 0 { connectionsPerHost[key] = nil }
        }
        resumeAcceptingIfBelowCap()
        if isDraining, drainIsOver { endDrain() }
        finishStopIfDone()
    }

    // The drain's state (see Server+Drain.swift).
    /// Whether `drain` has begun.
    @exclusivity(unchecked) public internal(set) var isDraining = false
    var drainTimer: Timer?
    var drainOutcome = DrainOutcome()
    var drainStoredAtStart: UInt64 = 0
    var drainCompletion: ((DrainOutcome) -> Void)?
    /// Whether the drain's deadline has passed (connections still storing may finish).
    @exclusivity(unchecked) var drainDeadlinePassed = false

    /// Out of descriptors on accept: stop accepting (new connections wait in the kernel's
    /// backlog instead of being accepted and dropped) until a connection closes or a second has
    /// passed, whichever comes first. No busy loop, no crash; logged once per pause.
    private func pauseForDescriptors(_ error: UVOperationError) {
        guard let listener else { return }
        listener.pauseAccepting()  // the listener has already paused itself; this says so here too
        statistics.acceptPauses += 1
        logger.error("accept failed: \(error): out of descriptors with \(connections.count) connections open; accepting paused until one closes (at most 1 s)")
        do throws(UVOperationError) {
            if descriptorRetryTimer == nil { descriptorRetryTimer = try Timer(loop: loop) }
            guard let retry = descriptorRetryTimer else { return }
            try retry.start(timeout: 1000) { [unowned self] in resumeAcceptingIfBelowCap() }
        } catch {
            logger.error("cannot arm the accept retry timer: \(error); accepting resumes when a connection closes")
        }
    }

    private func resumeAcceptingIfBelowCap() {
        guard let listener, listener.isAcceptingPaused, connections.count < maxConnections else { return }
        descriptorRetryTimer?.stop()
        logger.notice("accepting resumed with \(connections.count) connections open")
        listener.resumeAccepting()
    }

    /// Header and idle timeouts, for every connection at once (one timer, not one per connection).
    private func sweep() {
        let now = monotonicNanoseconds()
        for connection in connections { connection.checkTimeouts(now: now) }
        hook?.checkTimeouts(now: now)
        disk.refresh(store.fs)
        pool.wakeIfRoom()
        if let share = workerShare {
            share.publish(currentGauges)
            share.refresh(loop)
        }
    }

    func finishStopIfDone() {
        guard let callback = stopCallback, listenerClosed, udpClosed, hookClosed, connections.isEmpty, refusing.isEmpty, proxyReaders.isEmpty else { return }
        stopCallback = nil
        callback()
    }
}

/// Kinds of log line a hostile client can provoke at will (see `Server.noisy`).
enum NoisyLine: Hashable, Sendable {
    case connectionRefused, authenticationFailed, udpRefused, udpSeedRefused, hookDropped, webSocketClosed
}

/// Why a server could not start: one clear line each.
public enum ServerError: Error, CustomStringConvertible {
    /// The target directory cannot be used.
    case directory(path: String, reason: String)
    case listen(host: String, port: Int, UVOperationError)
    case listenUDP(host: String, port: Int, UVOperationError)
    /// A non-loopback address without a token and without `allowAnonymous`.
    case anonymousNonLoopback(host: String)

    public var description: String {
        switch self {
        case .directory(let path, let reason): return StoreError(path: path, reason: reason).description
        case .listen(let host, let port, let e):
            if e.error == .addressInUse { return "cannot listen on \(host):\(port): the port is in use" }
            return "cannot listen on \(host):\(port): \(e)"
        case .listenUDP(let host, let port, let e):
            if e.error == .addressInUse { return "cannot receive UDP on \(host):\(port): the port is in use (--udp-port to choose another, --no-udp to turn UDP off)" }
            return "cannot receive UDP on \(host):\(port): \(e)"
        case .anonymousNonLoopback(let host):
            return "refusing to listen on \(host) without a token: anyone who can reach it could store files (--token TOKEN, or --allow-anonymous if that is intended)"
        }
    }
}
