import DataStreamCore
import Glibc
import UV

/// A connection from a proxy allowed to send PROXY headers (`--proxy-protocol`): its header is
/// read first, and the connection is then admitted as if it came from the client the header
/// names (per-address caps, logs, partial owners). The header is peeked at until it is all in,
/// then taken exactly, so no byte after it is read here and the connection starts as any other.
/// While it waits, a `Poll` watches a duplicate of the socket with the receive low-water mark at
/// the bytes still needed, so it wakes once, not at every byte. The decisions are
/// `ProxyProtocol`'s. Owned by the server until it hands the stream on or closes it.
final class ProxyHeaderReader {
    private unowned let server: Server
    private var stream: TCPStream?
    /// The proxy's own address (the peer of the socket).
    let proxy: SocketAddress
    private var poll: Poll?
    private var pollDescriptor: Int32 = -1
    private var timer: Timer?
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: ProxyProtocol.maxLength, alignment: 16)
    private var ended = false

    init(server: Server, stream: TCPStream, proxy: SocketAddress) {
        self.server = server
        self.stream = stream
        self.proxy = proxy
    }

    deinit { buffer.deallocate() }

    /// Reads the header (now, or once it arrives, within the header timeout).
    func start(timeout: Double) {
        do throws(UVOperationError) {
            let t = try Timer(loop: server.loop)
            timer = t
            if let ms = TimeLimit.units(timeout, perSecond: 1000) {
                try t.start(timeout: ms) { [unowned self] in fail("no PROXY header within \(timeout) s") }
            }
        } catch {
            fail("\(error)")
            return
        }
        attempt()
    }

    private func attempt() {
        guard !ended, let stream else { return }
        switch stream.peekNow(into: buffer) {
        case .nothingYet:
            wait(for: ProxyProtocol.fixedLength)
        case .endOfStream:
            fail("the proxy closed the connection before its PROXY header")
        case .failed(let e):
            fail("reading the PROXY header: \(e)")
        case .bytes(let n):
            switch ProxyProtocol.parse(UnsafeRawBufferPointer(rebasing: buffer[0..<n])) {
            case .invalid(let reason):
                fail(reason)
            case .needMore(let length):
                wait(for: length)
            case .header(let header, let length):
                guard case .bytes(length) = stream.takeNow(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length])) else {
                    fail("the PROXY header could not be taken")
                    return
                }
                finish(header)
            }
        }
    }

    /// Waits until `bytes` are in (or the end, or an error), then tries again.
    private func wait(for bytes: Int) {
        guard let stream else { return }
        do throws(UVOperationError) {
            if poll == nil {
                pollDescriptor = try stream.duplicateDescriptor()
                let p = try Poll(loop: server.loop, socket: pollDescriptor)
                poll = p
                try p.startReadable { [unowned self] _ in attempt() }
            }
            try setReceiveLowWaterMark(pollDescriptor, bytes: bytes)
        } catch {
            fail("\(error)")
        }
    }

    private func finish(_ header: ProxyProtocol.Header) {
        guard let stream else { return }
        let client: SocketAddress
        switch header {
        case .local:
            client = proxy  // the proxy's own connection: a health check
        case .client(let address, let port):
            guard let c = SocketAddress(address: address, port: Int(port)) else {
                fail("a PROXY header with an address of \(address.count) bytes")
                return
            }
            client = c
        }
        if pollDescriptor >= 0 { try? setReceiveLowWaterMark(pollDescriptor, bytes: 1) }  // the socket's, for what follows
        self.stream = nil
        end()
        server.proxyHeaderRead(self, stream: stream, client: client)
    }

    /// The server is stopping: the connection is closed.
    func cancel() { fail("the server is stopping") }

    private func fail(_ reason: String) {
        guard !ended else { return }
        let stream = self.stream
        self.stream = nil
        end()
        stream?.close()
        server.proxyHeaderFailed(self, reason: reason)
    }

    private func end() {
        ended = true
        timer?.close()
        timer = nil
        if let poll {
            let fd = pollDescriptor
            poll.close { Glibc.close(fd) }  // the duplicate goes once libuv no longer watches it
        }
        poll = nil
    }
}
