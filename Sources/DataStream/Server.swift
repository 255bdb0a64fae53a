import DataStreamCore
import Logging
import UV

/// The receiver: a TCP listener on a loop, the connections it accepted, the store and the
/// process-wide buffer pool. Owned by its creator (the command line, a test, or an embedding
/// tool); everything runs on the loop's thread. `stop` closes the listener and every connection
/// (native partials are kept for resume) and calls back once all handles are closed.
public final class Server {
    /// Settings. Defaults are those of `datastream serve`.
    public struct Configuration: Sendable {
        public var host = "127.0.0.1"
        public var port = 9000
        public var directory = "./received"
        /// When set, native clients must authenticate with this token.
        public var token: String?
        /// fsync each file before it is linked into place, and the directory after.
        public var fsync = false
        public var maxFileSize: UInt64 = 1 << 40
        public var backlog: Int32 = 4096
        /// Per-connection buffered bytes: pause reading above `high`, resume at `low`.
        public var connectionBufferLow = 1 << 20
        public var connectionBufferHigh = 4 << 20
        /// Whole-process receive memory: reads wait for a buffer when it is all in use.
        public var processBufferBudget = 24 << 20
        public init() {}
    }

    /// Counters, readable at any time on the loop thread.
    public struct Statistics: Sendable {
        public var connectionsAccepted: UInt64 = 0
        public var uploadsStored: UInt64 = 0
        public var uploadsFailed: UInt64 = 0
        public var bytesReceived: UInt64 = 0
        public init() {}
    }

    public let loop: Loop
    public let configuration: Configuration
    public let store: Store
    public internal(set) var statistics = Statistics()
    let logger: Logger
    let pool: BufferPool
    let machineConfiguration: ConnectionStateMachine.Configuration
    private var listener: TCPListener?
    private var connections: [ObjectIdentifier: Connection] = [:]
    private var nextConnectionID: UInt64 = 0
    private var stopCallback: (() -> Void)?
    private var listenerClosed = true

    /// Prepares the target directory (created if missing; an error if unusable).
    public init(loop: Loop, configuration: Configuration, logger: Logger = Logger(label: "datastream")) throws(ServerError) {
        self.loop = loop
        self.configuration = configuration
        self.logger = logger
        do {
            store = try Store(directory: configuration.directory, fsync: configuration.fsync, loop: loop)
        } catch {
            throw .directory(error)
        }
        pool = BufferPool(budget: configuration.processBufferBudget)
        machineConfiguration = .init(token: configuration.token, maxFileSize: configuration.maxFileSize)
    }

    /// Binds and listens; returns the bound address (with the real port when `port` is 0).
    @discardableResult
    public func start() throws(ServerError) -> SocketAddress {
        do throws(UVOperationError) {
            let address = try SocketAddress(host: configuration.host, port: configuration.port)
            let listener = try TCPListener(loop: loop)
            do throws(UVOperationError) {
                try listener.bind(address)
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

    /// The connections open now.
    public var connectionCount: Int { connections.count }

    /// Stops accepting, ends every connection (native partials stay resumable) and calls
    /// `completion` once every handle of the server is closed.
    public func stop(_ completion: @escaping () -> Void = {}) {
        stopCallback = completion
        if let listener {
            self.listener = nil
            listener.close { [self] in
                listenerClosed = true
                finishStopIfDone()
            }
        }
        for connection in connections.values { connection.abort() }
        finishStopIfDone()
    }

    private func accept(_ result: Result<TCPStream, UVOperationError>) {
        switch result {
        case .failure(let error):
            logger.error("accept failed: \(error)")
        case .success(let stream):
            nextConnectionID += 1
            statistics.connectionsAccepted += 1
            let peer = (try? stream.peerAddress().description) ?? "?"
            let connection = Connection(id: nextConnectionID, server: self, stream: stream, peer: peer)
            connections[ObjectIdentifier(connection)] = connection
            connection.start()
        }
    }

    func connectionClosed(_ connection: Connection) {
        connections[ObjectIdentifier(connection)] = nil
        finishStopIfDone()
    }

    private func finishStopIfDone() {
        guard let callback = stopCallback, listenerClosed, connections.isEmpty else { return }
        stopCallback = nil
        callback()
    }
}

/// Why a server could not start: one clear line each.
public enum ServerError: Error, CustomStringConvertible {
    case directory(StoreError)
    case listen(host: String, port: Int, UVOperationError)

    public var description: String {
        switch self {
        case .directory(let e): return e.description
        case .listen(let host, let port, let e):
            if e.error == .addressInUse { return "cannot listen on \(host):\(port): the port is in use" }
            return "cannot listen on \(host):\(port): \(e)"
        }
    }
}
