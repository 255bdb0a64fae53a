import CLibUV
import Glibc

/// Readiness of a socket descriptor, reported on the loop (libuv reads or writes nothing). Used
/// on a *duplicate* of a stream's descriptor (`TCPStream.duplicateDescriptor`) while that stream
/// does not read, so the two never share a watcher. Owned by whoever created it; it keeps itself
/// alive until `close()` completes (see `Handle`); it does not close the descriptor. The libuv
/// type is `uv_poll_t`.
public final class Poll: Handle {
    private var callback: ((UVError?) -> Void)?

    /// The libuv function is `uv_poll_init_socket`.
    public init(loop: Loop, socket: Int32) throws(UVOperationError) {
        let raw = try Handle.initialise(UV_POLL, "poll_init") { uv_poll_init_socket(loop.uv, $0.assumingMemoryBound(to: uv_poll_t.self), socket) }
        super.init(loop: loop, initialisedHandle: raw)
    }

    private var poll: UnsafeMutablePointer<uv_poll_t> { raw.assumingMemoryBound(to: uv_poll_t.self) }

    /// Calls `callback` each time the descriptor is readable (or with the error libuv reports),
    /// until `stop`. The libuv function is `uv_poll_start` with `UV_READABLE`.
    public func startReadable(_ callback: @escaping (UVError?) -> Void) throws(UVOperationError) {
        self.callback = callback
        try check(uv_poll_start(poll, Int32(UV_READABLE.rawValue), pollFired), "poll_start")
    }

    /// The libuv function is `uv_poll_stop`.
    public func stop() { uv_poll_stop(poll) }

    override func releaseCallbacks() { callback = nil }

    fileprivate func fire(_ status: Int32) { callback?(status < 0 ? UVError(code: status) : nil) }
}

private func pollFired(_ p: UnsafeMutablePointer<uv_poll_t>?, _ status: Int32, _ events: Int32) {
    Handle.owner(p, as: Poll.self).fire(status)
}
