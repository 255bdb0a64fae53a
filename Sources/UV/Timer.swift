import CLibUV

/// A one-shot or repeating timer on a loop. Owned by whoever created it; it keeps itself alive
/// until `close()` completes (see `Handle`). The libuv type is `uv_timer_t`.
public final class Timer: Handle {
    private var callback: (() -> Void)?

    /// The libuv function is `uv_timer_init`.
    public init(loop: Loop) throws(UVOperationError) {
        let raw = try Handle.initialise(UV_TIMER, "timer_init") { uv_timer_init(loop.uv, $0.assumingMemoryBound(to: uv_timer_t.self)) }
        super.init(loop: loop, initialisedHandle: raw)
    }

    private var timer: UnsafeMutablePointer<uv_timer_t> { raw.assumingMemoryBound(to: uv_timer_t.self) }

    /// Calls `callback` after `timeout` ms, then every `repeat` ms if non-zero. The libuv function is `uv_timer_start`.
    public func start(timeout: UInt64, repeat: UInt64 = 0, _ callback: @escaping () -> Void) throws(UVOperationError) {
        self.callback = callback
        try check(uv_timer_start(timer, timerFired, timeout, `repeat`), "timer_start")
    }

    /// The libuv function is `uv_timer_stop`.
    public func stop() { uv_timer_stop(timer) }

    override func releaseCallbacks() { callback = nil }

    fileprivate func fire() { callback?() }
}

private func timerFired(_ t: UnsafeMutablePointer<uv_timer_t>?) {
    Handle.owner(t, as: Timer.self).fire()
}
