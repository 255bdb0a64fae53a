import CLibUV

/// The common base of every libuv handle wrapper (timer, signal, TCP, UDP).
///
/// Ownership: the handle memory is allocated here at a stable address (`uv_handle_size`).
/// From a successful `uv_*_init` on, the handle's `data` holds a +1 reference to this object,
/// so the object lives until libuv's close callback, which takes that reference back and frees
/// the memory: exactly one release, never a use after free. `close()` is idempotent;
/// `deinit` never calls libuv. A handle that is never closed is never freed, as in libuv.
open class Handle {
    /// The loop this handle belongs to.
    public let loop: Loop
    /// The `uv_handle_t` (really a `uv_tcp_t`, `uv_timer_t`, ...). Internal: only `UV` sees C types.
    let raw: UnsafeMutableRawPointer
    /// Read on every read and close of a stream: skips Swift's run-time exclusivity check, as a
    /// plain value only ever read or assigned whole.
    @exclusivity(unchecked) private var state: State = .open
    private var closeCallback: (() -> Void)?

    private enum State { case open, closing, closed }

    var handle: UnsafeMutablePointer<uv_handle_t> { raw.assumingMemoryBound(to: uv_handle_t.self) }

    /// Allocates memory for a handle of `type` and runs its `uv_*_init` on it; frees the memory
    /// and throws if that fails.
    static func initialise(_ type: uv_handle_type, _ operation: String, _ initialise: (UnsafeMutableRawPointer) -> Int32) throws(UVOperationError) -> UnsafeMutableRawPointer {
        let raw = allocateForLibuv(uv_handle_size(type))
        let status = initialise(raw)
        if status < 0 {
            freeForLibuv(raw)
            throw UVOperationError(operation, code: status)
        }
        return raw
    }

    /// Takes over a handle that `uv_*_init` initialised: stores the +1 self reference in `data`.
    init(loop: Loop, initialisedHandle raw: UnsafeMutableRawPointer) {
        self.loop = loop
        self.raw = raw
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
    }

    /// Whether `close()` has not been called yet.
    public var isOpen: Bool { state == .open }

    /// Whether libuv's close callback has run.
    public var isClosed: Bool { state == .closed }

    /// Starts closing the handle; `completion` runs in libuv's close callback, after which the
    /// handle memory is gone. Further calls do nothing. The libuv function is `uv_close`.
    public func close(_ completion: (() -> Void)? = nil) {
        guard state == .open else { return }
        state = .closing
        closeCallback = completion
        uv_close(handle, handleDidClose)
    }

    /// Subclasses drop their callbacks here (breaking reference cycles with their owners).
    func releaseCallbacks() {}

    /// Keeps the loop alive while this handle is active (the default). The libuv function is `uv_ref`.
    public func ref() { uv_ref(handle) }
    /// Lets the loop end while this handle is active. The libuv function is `uv_unref`.
    public func unref() { uv_unref(handle) }

    fileprivate func finishClose() {
        state = .closed
        let callback = closeCallback
        closeCallback = nil
        releaseCallbacks()
        callback?()
    }

    /// The object that owns `handle`, without changing its retain count.
    static func owner<T: Handle>(_ handle: UnsafeRawPointer?, as: T.Type) -> T {
        let h = handle!.assumingMemoryBound(to: uv_handle_t.self)
        return Unmanaged<T>.fromOpaque(h.pointee.data!).takeUnretainedValue()
    }

    deinit {
        assert(state == .closed, "a handle was released without uv_close")
    }
}

private func handleDidClose(_ h: UnsafeMutablePointer<uv_handle_t>?) {
    guard let h else { return }
    let owner = Unmanaged<Handle>.fromOpaque(h.pointee.data!).takeRetainedValue()
    h.pointee.data = nil
    owner.finishClose()
    freeForLibuv(h)
}
