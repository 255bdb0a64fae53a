import CLibUV

/// A libuv event loop: either one this object created and owns, or one the caller owns (embedding).
///
/// Everything in `UV` runs on the thread that runs the loop; nothing here is thread-safe.
/// An owned loop is closed by `close()` (which fails with `EBUSY` while handles are open);
/// a borrowed loop is never closed by this object, its owner keeps that duty.
public final class Loop {
    /// The libuv loop. Internal: only `UV` sees C types.
    let uv: UnsafeMutablePointer<uv_loop_t>
    /// Whether this object created `uv` and must close and free it.
    public let ownsLoop: Bool
    private var closed = false
    /// File requests and work items submitted to the threadpool through `UV` and not yet
    /// answered on this loop (libuv keeps no such count itself): the file threads' queue depth.
    @exclusivity(unchecked) public internal(set) var threadpoolRequestsInFlight = 0

    /// Creates and owns a new loop. The libuv function is `uv_loop_init`.
    public init() throws(UVOperationError) {
        let loop = UnsafeMutablePointer<uv_loop_t>.allocate(capacity: 1)
        let status = uv_loop_init(loop)
        if status < 0 {
            loop.deallocate()
            throw UVOperationError("loop_init", code: status)
        }
        uv = loop
        ownsLoop = true
    }

    /// Runs on a `uv_loop_t` that the caller created and will close: for embedding DataStream in a C tool.
    /// The pointer must stay valid for the lifetime of this object and of every handle made on it.
    public init(borrowing rawLoop: UnsafeMutableRawPointer) {
        uv = rawLoop.assumingMemoryBound(to: uv_loop_t.self)
        ownsLoop = false
    }

    /// The loop's process-wide default: borrowed, never closed here. The libuv function is `uv_default_loop`.
    public static func defaultLoop() -> Loop { Loop(borrowing: UnsafeMutableRawPointer(uv_default_loop())) }

    /// The `uv_loop_t *` for C code that shares this loop.
    public var rawPointer: UnsafeMutableRawPointer { UnsafeMutableRawPointer(uv) }

    /// How `run` returns.
    public enum RunMode: Sendable {
        /// Until no active handle or request remains, or `stop()`.
        case untilDone
        /// One iteration, blocking for I/O if there is nothing pending.
        case once
        /// One iteration, without blocking.
        case noWait
    }

    /// Runs the loop. Returns true if there are still active handles or requests. The libuv function is `uv_run`.
    @discardableResult
    public func run(_ mode: RunMode = .untilDone) -> Bool {
        let m: uv_run_mode
        switch mode {
        case .untilDone: m = UV_RUN_DEFAULT
        case .once: m = UV_RUN_ONCE
        case .noWait: m = UV_RUN_NOWAIT
        }
        return uv_run(uv, m) != 0
    }

    /// Makes `run` return at the end of the current iteration. The libuv function is `uv_stop`.
    public func stop() { uv_stop(uv) }

    /// The loop's cached time in milliseconds. The libuv function is `uv_now`.
    public var now: UInt64 { uv_now(uv) }

    /// Refreshes the cached time. The libuv function is `uv_update_time`.
    public func updateTime() { uv_update_time(uv) }

    /// Whether any handle or request keeps the loop alive. The libuv function is `uv_loop_alive`.
    public var isAlive: Bool { uv_loop_alive(uv) != 0 }

    /// The number of handles on this loop that are not closed yet (active or not). The libuv function is `uv_walk`.
    public var openHandleCount: Int {
        var count = 0
        withUnsafeMutablePointer(to: &count) { p in
            uv_walk(uv, { _, arg in arg!.assumingMemoryBound(to: Int.self).pointee += 1 }, p)
        }
        return count
    }

    /// Closes an owned loop. Fails with `EBUSY` while a handle is open. The libuv function is `uv_loop_close`.
    public func close() throws(UVOperationError) {
        precondition(ownsLoop, "a borrowed loop is closed by its owner")
        guard !closed else { return }
        try check(uv_loop_close(uv), "loop_close")
        closed = true
        uv.deallocate()
    }

    deinit {
        // A loop that was never closed is leaked on purpose: freeing memory that libuv may still
        // reference would be worse. Owners call `close()`.
    }
}

/// Nanoseconds of a monotonic clock (arbitrary origin). The libuv function is `uv_hrtime`.
public func monotonicNanoseconds() -> UInt64 { uv_hrtime() }

/// Microseconds of the same clock.
public func monotonicMicroseconds() -> UInt64 { uv_hrtime() / 1_000 }
