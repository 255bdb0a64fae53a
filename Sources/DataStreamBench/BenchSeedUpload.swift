import DataStreamCore
import UV

/// One upload of a bench run in the seed's framing (size digits, the bytes, end of stream),
/// done when the receiver closes. It runs on a plain socket of the generator's
/// `ClientSocketGroup`, which costs the fewest system calls a client can: a small upload is
/// `socket`, two options, `bind`, `connect`, one `sendmsg` (digits, header and bytes, held back
/// with `MSG_MORE` so they leave with the FIN), `shutdown`, one `epoll_ctl`, `read`, `close`.
/// A larger one waits for the socket to take more (`.writable`) between sends. Owned by its
/// generator.
final class BenchSeedUpload: BenchTransfer, ClientSocketOwner {
    unowned let generator: LoadGenerator
    let index: UInt64
    var activeSlot = -1
    let size: UInt64
    let startedAt = monotonicNanoseconds()
    var dueAt: UInt64 = 0
    private(set) var lastProgress: UInt64
    private var socket: ClientSocket?
    /// The size digits and the 16-byte content header (or the whole upload, if shorter), and
    /// how much of them the kernel took.
    private var head: [UInt8]
    private var headSent = 0
    private let digits: Int
    /// The next file byte past the header to send.
    private var offset: UInt64
    private var waiting: ClientSocketEvents = []
    private var ended = false

    init(generator: LoadGenerator, index: UInt64, size: UInt64) {
        self.generator = generator
        self.index = index
        self.size = size
        let headerBytes = Int(min(UInt64(BenchContent.headerLength), size))
        head = generator.digits(of: size, reserving: headerBytes)
        digits = head.count
        generator.content.appendHeader(of: index, count: headerBytes, to: &head)
        offset = UInt64(headerBytes)
        lastProgress = startedAt
    }

    /// File bytes the kernel took (not the digits).
    private var sent: UInt64 { UInt64(max(0, headSent - digits)) + offset - UInt64(head.count - digits) }

    func start(_ group: ClientSocketGroup, to address: SocketAddress, from source: SocketAddress?) {
        do {
            // The handshake's ACK rides on the first bytes.
            socket = try group.connect(to: address, from: source, segments: [.ackWithFirstBytes])
        } catch {
            end(.connect, "\(error)")
            return
        }
        send()
    }

    /// Sends until everything is out (then half-closes and waits for the receiver's close) or
    /// the socket takes no more (then waits until it is writable).
    private func send() {
        guard let socket, let group = generator.clientSockets else { return }
        do {
            while true {
                let second = offset < size
                    ? generator.content.window(of: index, offset: offset, count: Int(min(size - offset, UInt64(generator.options.writeSize))))
                    : UnsafeRawBufferPointer(start: nil, count: 0)
                let wanted = head.count - headSent + second.count
                if wanted == 0 { break }
                let taken = try head.withUnsafeBytes { h in
                    try group.send(socket, UnsafeRawBufferPointer(rebasing: h[headSent...]), second, more: true)
                }
                let fromHead = min(taken, head.count - headSent)
                headSent += fromHead
                offset += UInt64(taken - fromHead)
                // Moving again after a wait is progress (the first send is the start's turn).
                if taken > 0, !waiting.isEmpty { lastProgress = monotonicNanoseconds() }
                if taken < wanted {
                    try wait(for: .writable)
                    return
                }
            }
            try group.shutdownWrite(socket)
            try wait(for: .readable)
        } catch {
            end(sent == 0 && headSent == 0 ? .connect : .connection, "\(error)")
        }
    }

    private func wait(for events: ClientSocketEvents) throws(UVOperationError) {
        guard events != waiting, let socket, let group = generator.clientSockets else { return }
        try group.watch(socket, for: events, owner: self)
        waiting = events
    }

    func socket(_ socket: ClientSocket, isReady events: ClientSocketEvents) {
        if waiting == .writable {
            let before = headSent + Int(offset)
            send()
            // A failure the send did not report (it took nothing): end rather than spin.
            if !ended, events.contains(.failed), headSent + Int(offset) == before {
                end(sent == 0 && headSent == 0 ? .connect : .connection, "the connection failed")
            }
            return
        }
        guard let group = generator.clientSockets else { return }
        switch group.read(socket, into: generator.readBuffer) {
        case .endOfStream: end(nil, "")
        case .bytes: end(.protocolError, "the receiver sent bytes to a seed-framing upload")
        case .nothingYet: break
        case .failed(let e): end(.connection, "read failed: \(e)")
        }
    }

    /// Gives up on the upload (the generator's stall timeout).
    func fail(_ kind: LoadGenerator.FailureKind, _ message: String) { end(kind, message) }

    private func end(_ failure: LoadGenerator.FailureKind?, _ message: String) {
        guard !ended else { return }
        ended = true
        if let socket {
            generator.clientSockets?.close(socket)
            self.socket = nil
        }
        generator.uploadEnded(self, bytes: sent, failure: failure.map { ($0, message) })
    }
}
