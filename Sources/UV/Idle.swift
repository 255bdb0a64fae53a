import CLibUV

/// Runs a callback once per loop iteration, before the loop polls for I/O, for as long as it is
/// started; while started, the loop's poll does not block. For work that must wait until no
/// libuv callback is in progress, and should then run at once (for example reads that a
/// callback made possible). Owned by whoever created it; it keeps itself alive until `close()`
/// completes (see `Handle`). The libuv type is `uv_idle_t`.
public final class Idle: Handle {
    private var callback: (() -> Void)?
    /// Whether `start` is in effect.
    public private(set) var isActive = false

    /// The libuv function is `uv_idle_init`.
    public init(loop: Loop) throws(UVOperationError) {
        let raw = try Handle.initialise(UV_IDLE, "idle_init") { uv_idle_init(loop.uv, $0.assumingMemoryBound(to: uv_idle_t.self)) }
        super.init(loop: loop, initialisedHandle: raw)
    }

    private var idle: UnsafeMutablePointer<uv_idle_t> { raw.assumingMemoryBound(to: uv_idle_t.self) }

    /// Calls `callback` once per loop iteration until `stop`. The libuv function is `uv_idle_start`.
    public func start(_ callback: @escaping () -> Void) throws(UVOperationError) {
        self.callback = callback
        try check(uv_idle_start(idle, idleFired), "idle_start")
        isActive = true
    }

    /// The libuv function is `uv_idle_stop`.
    public func stop() {
        uv_idle_stop(idle)
        isActive = false
    }

    override func releaseCallbacks() {
        callback = nil
        isActive = false
    }

    fileprivate func fire() { callback?() }
}

private func idleFired(_ i: UnsafeMutablePointer<uv_idle_t>?) {
    Handle.owner(i, as: Idle.self).fire()
}
