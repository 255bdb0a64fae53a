import CLibUV
import Glibc

/// Watches a Unix signal on a loop (SIGINT, SIGTERM): the callback runs on the loop's thread.
/// Owned by whoever created it; it keeps itself alive until `close()` completes. The libuv type is `uv_signal_t`.
public final class Signal: Handle {
    private var callback: ((Int32) -> Void)?

    /// The libuv function is `uv_signal_init`.
    public init(loop: Loop) throws(UVOperationError) {
        let raw = try Handle.initialise(UV_SIGNAL, "signal_init") { uv_signal_init(loop.uv, $0.assumingMemoryBound(to: uv_signal_t.self)) }
        super.init(loop: loop, initialisedHandle: raw)
    }

    /// The libuv function is `uv_signal_start`.
    public func start(_ signum: Int32, _ callback: @escaping (Int32) -> Void) throws(UVOperationError) {
        self.callback = callback
        try check(uv_signal_start(raw.assumingMemoryBound(to: uv_signal_t.self), signalArrived, signum), "signal_start")
    }

    /// The libuv function is `uv_signal_stop`.
    public func stop() { uv_signal_stop(raw.assumingMemoryBound(to: uv_signal_t.self)) }

    override func releaseCallbacks() { callback = nil }

    fileprivate func deliver(_ signum: Int32) { callback?(signum) }
}

private func signalArrived(_ s: UnsafeMutablePointer<uv_signal_t>?, _ signum: Int32) {
    Handle.owner(s, as: Signal.self).deliver(signum)
}

/// Sets SIGPIPE to be ignored, process-wide. libuv writes to sockets with write(2), so a peer
/// that closes first raises SIGPIPE, whose default action kills the whole process; ignored,
/// the write fails with EPIPE and only that connection ends. Servers, senders and the load
/// generator call this when they start (as Node does for its process).
public func ignoreBrokenPipes() {
    signal(SIGPIPE, SIG_IGN)
}
