import CLibUV
import Glibc

/// The reading end of a pipe, as a stream on the loop (a child's standard output): bytes come
/// to a callback as they arrive, then the end. Owned like every handle: it lives until `close`.
/// The libuv type is `uv_pipe_t`.
public final class PipeReader: Handle {
    private var onData: (([UInt8]) -> Void)?
    private var onEnd: (() -> Void)?
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 16)

    /// A new pipe: its reading end becomes this stream's, and its writing end is returned
    /// (close-on-exec; give it to a child, which gets its own copy, then close it). The libuv
    /// functions are `uv_pipe`, `uv_pipe_init` and `uv_pipe_open`.
    public static func make(loop: Loop) throws(UVOperationError) -> (reader: PipeReader, writeEnd: Int32) {
        var fds: [uv_file] = [-1, -1]
        let made = fds.withUnsafeMutableBufferPointer { uv_pipe($0.baseAddress, 0, 0) }
        if made < 0 { throw UVOperationError("pipe", code: made) }
        do {
            return (try PipeReader(loop: loop, descriptor: fds[0]), fds[1])
        } catch {
            Glibc.close(fds[1])
            throw error
        }
    }

    private init(loop: Loop, descriptor: Int32) throws(UVOperationError) {
        let raw: UnsafeMutableRawPointer
        do throws(UVOperationError) {
            raw = try Handle.initialise(UV_NAMED_PIPE, "pipe_init") { uv_pipe_init(loop.uv, $0.assumingMemoryBound(to: uv_pipe_t.self), 0) }
        } catch {
            Glibc.close(descriptor)
            throw error
        }
        super.init(loop: loop, initialisedHandle: raw)
        let opened = uv_pipe_open(raw.assumingMemoryBound(to: uv_pipe_t.self), descriptor)
        if opened < 0 {
            Glibc.close(descriptor)
            close()
            throw UVOperationError("pipe_open", code: opened)
        }
    }

    deinit { buffer.deallocate() }

    /// Starts delivering what arrives to `onData`, then `onEnd` once at the end of the pipe
    /// (every writer closed it) or on an error. The libuv function is `uv_read_start`.
    public func start(onData: @escaping ([UInt8]) -> Void, onEnd: @escaping () -> Void) throws(UVOperationError) {
        self.onData = onData
        self.onEnd = onEnd
        try check(uv_read_start(raw.assumingMemoryBound(to: uv_stream_t.self), pipeAlloc, pipeRead), "read_start")
    }

    override func releaseCallbacks() {
        onData = nil
        onEnd = nil
    }

    fileprivate var readBuffer: UnsafeMutableRawBufferPointer { buffer }

    fileprivate func delivered(_ n: Int) {
        if n > 0 {
            onData?(Array(UnsafeRawBufferPointer(rebasing: buffer[0..<n])))
        } else if n < 0 {
            uv_read_stop(raw.assumingMemoryBound(to: uv_stream_t.self))
            let end = onEnd
            onEnd = nil
            end?()
        }
    }
}

private func pipeAlloc(_ h: UnsafeMutablePointer<uv_handle_t>?, _ suggested: Int, _ buf: UnsafeMutablePointer<uv_buf_t>?) {
    let b = Handle.owner(h, as: PipeReader.self).readBuffer
    buf?.pointee = uv_buf_init(b.baseAddress?.assumingMemoryBound(to: CChar.self), UInt32(b.count))
}

private func pipeRead(_ s: UnsafeMutablePointer<uv_stream_t>?, _ n: Int, _ buf: UnsafePointer<uv_buf_t>?) {
    s?.withMemoryRebound(to: uv_handle_t.self, capacity: 1) { Handle.owner($0, as: PipeReader.self) }.delivered(n)
}
