import CLibUV
import Glibc

/// A pipe already holding `bytes` with its writing end closed: its reading end is a child
/// process's standard input that reads those bytes and then the end. What libuv 1.44 lacks for
/// it is a pipe filled before the child starts, with no stream to keep open and write from the
/// loop (`uv_pipe` makes it; the write is a plain `write(2)`). `bytes` must fit the pipe's buffer (64 KiB on Linux), so the write never blocks.
public enum FilledPipe {
    /// The reading end (close-on-exec: a spawned child gets it only as one of its stdio).
    public static func make(_ bytes: [UInt8]) throws(UVOperationError) -> Int32 {
        guard bytes.count <= 65_536 else { throw UVOperationError("pipe", code: -E2BIG) }
        var ends: [uv_file] = [-1, -1]
        // Both ends close-on-exec; the writing end non-blocking (the write can then never wait).
        _ = try check(uv_pipe(&ends, 0, Int32(UV_NONBLOCK_PIPE.rawValue)), "pipe")
        let written = bytes.withUnsafeBytes { write(ends[1], $0.baseAddress, $0.count) }
        let failure = errno
        Glibc.close(ends[1])
        guard written == bytes.count else {
            Glibc.close(ends[0])
            throw UVOperationError("write", target: "a child's standard input", code: written < 0 ? -failure : -EIO)
        }
        return ends[0]
    }
}
