import CLibUV

/// Wakes a loop from another thread: `send()` is the one call in `UV` that may be made from any
/// thread; the callback runs on the loop's thread (several sends may coalesce into one call).
/// Owned by whoever created it; it keeps itself alive until `close()` completes. The libuv type is `uv_async_t`.
public final class AsyncWakeup: Handle, @unchecked Sendable {
    private var callback: (() -> Void)?

    /// The libuv function is `uv_async_init`.
    public init(loop: Loop, _ callback: @escaping () -> Void) throws(UVOperationError) {
        let raw = try Handle.initialise(UV_ASYNC, "async_init") { uv_async_init(loop.uv, $0.assumingMemoryBound(to: uv_async_t.self), asyncFired) }
        self.callback = callback
        super.init(loop: loop, initialisedHandle: raw)
    }

    /// Thread-safe. The libuv function is `uv_async_send`.
    public func send() { uv_async_send(raw.assumingMemoryBound(to: uv_async_t.self)) }

    override func releaseCallbacks() { callback = nil }

    fileprivate func fire() { callback?() }
}

private func asyncFired(_ a: UnsafeMutablePointer<uv_async_t>?) {
    Handle.owner(a, as: AsyncWakeup.self).fire()
}
