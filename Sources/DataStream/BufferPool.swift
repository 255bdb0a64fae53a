import DataStreamCore
import Glibc

/// One large receive buffer. Reads land in it directly and file writes are issued from it, so
/// received bytes are never copied in user space. Reference-counted by hand: the connection that
/// reads into it holds one reference, each queued or in-flight write range holds one; when the
/// count reaches zero the slab goes back to its pool.
final class Slab {
    let memory: UnsafeMutableRawBufferPointer
    /// Bytes filled by reads, from the start.
    var filled = 0
    fileprivate var references = 0

    fileprivate init(size: Int) {
        // mmap, not malloc: untouched pages cost no RSS and munmap really returns memory.
        let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        precondition(p != MAP_FAILED, "mmap of a \(size)-byte receive buffer failed")
        memory = UnsafeMutableRawBufferPointer(start: p, count: size)
    }

    deinit { munmap(memory.baseAddress, memory.count) }

    var tail: Int { memory.count - filled }
}

/// Something that waits for the pool to have room again (a connection whose read got no buffer).
protocol BufferWaiter: AnyObject {
    func buffersAvailable()
}

/// The process-wide pool of receive slabs and the budget of buffered bytes (received, not yet
/// written to disk) for all connections together. Owned by the server; used on the loop thread only.
///
/// When the budget's high mark is passed, reads get no buffer (libuv reports `ENOBUFS`, the
/// connection stops reading and waits here); at the low mark the waiters resume in order. This
/// bounds memory whatever the number of connections and however slow the disk is.
final class BufferPool {
    let slabSize: Int
    /// The largest single read handed to libuv (smaller reads keep the budget's overshoot small).
    let maxReadSize: Int
    private let maxFreeSlabs: Int
    private var freeSlabs: [Slab] = []
    private(set) var budget: WaterMarks
    private var waiters: [BufferWaiter] = []
    /// Slabs alive (in use or free), for metrics and tests.
    private(set) var liveSlabs = 0

    init(slabSize: Int = 256 * 1024, maxReadSize: Int = 64 * 1024, maxFreeSlabs: Int = 32, budgetLow: Int = 16 << 20, budgetHigh: Int = 24 << 20) {
        self.slabSize = slabSize
        self.maxReadSize = maxReadSize
        self.maxFreeSlabs = maxFreeSlabs
        self.budget = WaterMarks(low: budgetLow, high: budgetHigh)
        freeSlabs.reserveCapacity(maxFreeSlabs)
    }

    /// Whether a read may be given a buffer now.
    var hasRoom: Bool { !budget.isPaused && budget.hasRoom }

    /// How many bytes the next read may take (0 when the budget is exhausted).
    var readAllowance: Int { hasRoom ? min(maxReadSize, budget.high - budget.buffered) : 0 }

    func takeSlab() -> Slab {
        let slab: Slab
        if let s = freeSlabs.popLast() {
            slab = s
        } else {
            slab = Slab(size: slabSize)
            liveSlabs += 1
        }
        slab.filled = 0
        slab.references = 1
        return slab
    }

    func retain(_ slab: Slab) { slab.references += 1 }

    func release(_ slab: Slab) {
        slab.references -= 1
        precondition(slab.references >= 0, "slab released twice")
        guard slab.references == 0 else { return }
        if freeSlabs.count < maxFreeSlabs {
            freeSlabs.append(slab)
        } else {
            liveSlabs -= 1
        }
    }

    /// Whether `slab` has no reference but the reader's (so the reader may rewind it).
    func isOnlyReader(_ slab: Slab) -> Bool { slab.references == 1 }

    func buffered(_ n: Int) { _ = budget.added(n) }

    func written(_ n: Int) {
        if budget.removed(n) == .resume || (!waiters.isEmpty && hasRoom) {
            wakeWaiters()
        }
    }

    func waitForRoom(_ waiter: BufferWaiter) { waiters.append(waiter) }

    func cancelWait(_ waiter: BufferWaiter) { waiters.removeAll { $0 === waiter } }

    private func wakeWaiters() {
        let ready = waiters
        waiters.removeAll(keepingCapacity: true)
        for w in ready { w.buffersAvailable() }
    }
}
