// A peer for comparisons: a SwiftNIO receiver of the seed framing (ASCII size digits, then the
// bytes), one file per upload, the connection closed once the declared size is written. As a
// Swift developer would write it with NIO: a ServerBootstrap on one event loop per core, a
// channel handler per connection that parses the size and writes each read with pwrite(2) on
// its event loop (backpressure is NIO's: the next read waits for the handler).
// Usage: nio-receiver PORT DIR
import Glibc
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

let arguments = CommandLine.arguments
guard arguments.count >= 3, let port = Int(arguments[1]) else {
    print("usage: nio-receiver PORT DIR")
    exit(2)
}
let directory = arguments[2]
let counter = NIOLockedValueBox(0)

final class SeedReceiver: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private var size: Int64?
    private var digits: Int64 = 0
    private var sawDigit = false
    private var received: Int64 = 0
    private var fd: Int32 = -1
    private var path = ""
    private var done = false

    private func open() -> Bool {
        let n = counter.withLockedValue { $0 += 1; return $0 }
        path = "\(directory)/upload-\(n).bin"
        fd = Glibc.open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        return fd >= 0
    }

    private func finish(context: ChannelHandlerContext, ok: Bool) {
        guard !done else { return }
        done = true
        if fd >= 0 {
            Glibc.close(fd)
            fd = -1
            if !ok { unlink(path) }
        }
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        guard !done else { return }
        if size == nil {
            while let byte = buffer.readableBytesView.first, byte >= 0x30, byte <= 0x39 {
                digits = digits * 10 + Int64(byte - 0x30)
                sawDigit = true
                buffer.moveReaderIndex(forwardBy: 1)
            }
            guard buffer.readableBytes > 0 else { return }
            size = digits
            guard open() else { finish(context: context, ok: false); return }
        }
        let ok = buffer.withUnsafeReadableBytes { bytes -> Bool in
            var offset = 0
            while offset < bytes.count {
                let n = pwrite(fd, bytes.baseAddress! + offset, bytes.count - offset, off_t(received) + off_t(offset))
                if n <= 0 { return false }
                offset += n
            }
            return true
        }
        received += Int64(buffer.readableBytes)
        if !ok { finish(context: context, ok: false); return }
        if received >= size! { finish(context: context, ok: true) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !done, size == nil, sawDigit, digits == 0, open() {
            finish(context: context, ok: true)  // "0" and the end: an empty upload
            return
        }
        finish(context: context, ok: size != nil && received >= size!)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        finish(context: context, ok: false)
    }
}

let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
let bootstrap = ServerBootstrap(group: group)
    .serverChannelOption(.backlog, value: 4096)
    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
    .childChannelOption(.allowRemoteHalfClosure, value: true)
    .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 64 * 1024, maximum: 256 * 1024))
    .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(SeedReceiver()) }
    }
let channel = try bootstrap.bind(host: "127.0.0.1", port: port).wait()
print("listening tcp 127.0.0.1:\(port)")
try channel.closeFuture.wait()
