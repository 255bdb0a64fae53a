import Glibc

/// libuv's threadpool, which runs every file request and `Loop.queueWork` item. There is one per
/// process, shared by all loops (the caller's own `uv_loop_t` too), and libuv starts it at the
/// first request, reading its size from `UV_THREADPOOL_SIZE` then and never again. So the size
/// belongs to whoever owns the process (the command line), set before any loop does file work;
/// a library embedded in someone else's process leaves it alone.
public enum Threadpool {
    /// libuv's own default size, and its ceiling.
    public static let libuvDefault = 4
    public static let maximum = 1024

    /// The size asked for in the environment (`UV_THREADPOOL_SIZE`), if any.
    public static var requestedSize: Int? {
        getenv("UV_THREADPOOL_SIZE").flatMap { Int(String(cString: $0)) }
    }

    /// Asks for `threads` threads (1...`maximum`) by setting `UV_THREADPOOL_SIZE`. Takes effect
    /// only if the pool has not started yet in this process; nothing tells whether it has.
    public static func setSize(_ threads: Int) {
        precondition((1...maximum).contains(threads), "threadpool size \(threads) out of 1...\(maximum)")
        setenv("UV_THREADPOOL_SIZE", "\(threads)", 1)
    }

    /// Online processor cores (at least 1).
    public static var cores: Int { max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN))) }
}
