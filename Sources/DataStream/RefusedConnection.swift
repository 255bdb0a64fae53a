import DataStreamCore
import UV

/// A connection refused at accept (over the per-address cap): it waits for the client's first
/// bytes to learn its protocol, so that a native client gets the ERROR frame that says why and
/// a seed client (whose protocol has no reply) sees only the close. Bounded by the header
/// timeout; the server keeps a limited number of these (`Server.refusing`).
///
/// Owns its stream and timer, and is held by the server until both are closed.
final class RefusedConnection: TCPStreamReader {
    private let stream: TCPStream
    private let error: ProtocolError
    private weak var server: Server?
    private var timer: UV.Timer?
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)
    private var done = false
    /// The longest a refused connection waits for its first bytes (milliseconds).
    static let longestWait: UInt64 = 10_000

    init(stream: TCPStream, error: ProtocolError, server: Server) {
        self.stream = stream
        self.error = error
        self.server = server
    }

    deinit { buffer.deallocate() }

    func start(timeout: Double) {
        do throws(UVOperationError) {
            try stream.startReading(self)
            let t = try UV.Timer(loop: stream.loop)
            timer = t
            try t.start(timeout: min(TimeLimit.units(timeout, perSecond: 1000) ?? Self.longestWait, Self.longestWait)) { [unowned self] in finish(reply: nil) }
        } catch {
            finish(reply: nil)
        }
    }

    func readBuffer(for stream: TCPStream, suggestedSize: Int) -> UnsafeMutableRawBufferPointer? { buffer }

    func stream(_ stream: TCPStream, didRead event: ReadEvent, buffer: UnsafeMutableRawBufferPointer?) {
        switch event {
        case .data(let count):
            guard count > 0, let first = buffer?.first else { return }
            finish(reply: ConnectionStateMachine.refusal(error, firstByte: first))
        case .endOfStream, .failed:
            finish(reply: nil)
        case .noBuffer:
            return
        }
    }

    /// The server stops: close without a reply.
    func cancel() { finish(reply: nil) }

    private func finish(reply: [UInt8]?) {
        guard !done else { return }
        done = true
        stream.stopReading()
        timer?.close()
        timer = nil
        let release: () -> Void = { [self] in server?.refusalEnded(self) }
        if let reply, (try? stream.write(reply)) != nil, (try? stream.shutdown { [stream] _ in stream.close(release) }) != nil {
            return
        }
        stream.close(release)
    }
}
