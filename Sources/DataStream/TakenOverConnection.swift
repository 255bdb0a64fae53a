import Logging
import UV

/// What the drivers that take a stream over from `Connection` share (`HTTPConnection`, and the
/// `WebSocketConnection` an HTTP connection hands its stream to): the stream and the server's
/// parts they use, the log line's metadata, buffers from the pool, and closing the stream once
/// the answers queued on it are out. Each subclass reads (`TCPStreamReader`), drives its own
/// machine, and says when it wants input (`updateReading`).
class TakenOverConnection: ServedConnection, BufferWaiter {
    let id: UInt64
    let server: Server
    let stream: TCPStream
    let pool: BufferPool
    let store: Store
    private let protocolName: String
    /// Reading stopped until the pool has room again.
    var waitingForBuffer = false
    /// The stream was handed on or is closing: nothing more is done with it.
    var closing = false

    init(id: UInt64, server: Server, stream: TCPStream, acceptedPeer: SocketAddress?, protocolName: String) {
        self.id = id
        self.server = server
        self.stream = stream
        self.pool = server.pool
        self.store = server.store
        self.protocolName = protocolName
        super.init(acceptedPeer: acceptedPeer)
    }

    var peer: SocketAddress? { acceptedPeer ?? (try? stream.peerAddress()) }
    private(set) lazy var peerText: String = peer?.description ?? "?"
    private lazy var logger: Logger = {
        var logger = server.logger
        logger[metadataKey: "connection"] = "\(id)"
        logger[metadataKey: "peer"] = "\(peerText)"
        logger[metadataKey: "protocol"] = "\(protocolName)"
        return logger
    }()

    func log(_ level: Logger.Level, _ message: @autoclosure () -> Logger.Message, metadata: @autoclosure () -> Logger.Metadata? = nil) {
        guard server.logLevel <= level else { return }
        logger.log(level: level, message(), metadata: metadata())
    }

    /// Starts or stops reading as the subclass's state asks.
    func updateReading() {}

    func readBuffer(for stream: TCPStream, suggestedSize: Int) -> UnsafeMutableRawBufferPointer? {
        if let buffer = pool.readBuffer(for: self) { return buffer }
        waitingForBuffer = true
        return nil
    }

    func buffersAvailable() {
        waitingForBuffer = false
        updateReading()
    }

    /// This driver is done with the stream (another takes it, or it closes): no more reads.
    func letGoOfStream() {
        closing = true
        stream.stopReading()
        pool.cancelWait(self)
    }

    /// Closes the stream, once the writes queued on it are out (uv_close would cancel them),
    /// and leaves the server's table in the close callback.
    func closeStream() {
        letGoOfStream()
        if server.onEvent != nil { _ = peerText }  // events after the close still name the peer
        if stream.writeQueueSize > 0, (try? stream.shutdown { [self] _ in stream.close { [self] in server.connectionClosed(self) } }) != nil {
            return
        }
        stream.close { [self] in server.connectionClosed(self) }
    }
}
