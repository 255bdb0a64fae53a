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
    /// Whether the slab goes back to its pool when its last reference goes (false: a copy
    /// made by `BufferPool.slab(copying:)`, freed then).
    fileprivate var pooled = true

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

/// The process-wide pool of receive slabs, shared by all connections. Owned by the server; used
/// on the loop thread only.
///
/// Reads of all connections land one after another in the pool's *current* slab (libuv calls
/// alloc, read and the read callback in sequence, one stream at a time), so a connection holds
/// memory only for bytes it has received and not yet written: an idle connection holds none.
/// A slab returns to the pool when every range in it is written. At most `maxSlabs` exist: when
/// none is free, reads get no buffer (libuv reports `ENOBUFS`, the connection stops reading and
/// waits here) and resume in order as slabs come back. This bounds memory whatever the number of
/// connections and however slow the disk is.
///
/// Waiters are woken first come, first served, and only as many as the room can serve: a slab
/// coming back wakes `wakesPerSlab` of them, and each read served while others wait wakes one
/// more (so the waking goes on as long as reads find room). Waking all of them at once (thousands
/// of connections) made each restart reading, be polled, find no buffer and stop again: two
/// `epoll_ctl` calls and a poll per waiter per returned slab. Leaving the queue is O(1).
///
/// `@exclusivity(unchecked)` marks the per-read state: plain values read or assigned in place,
/// and the set of waiting ids, whose inserts and removals run no code of ours (the rule is
/// written on `Connection`).
final class BufferPool {
    let slabSize: Int
    /// The largest single read handed to libuv.
    let maxReadSize: Int
    let maxSlabs: Int
    private let maxFreeSlabs: Int
    private var freeSlabs: [Slab] = []
    @exclusivity(unchecked) private var current: Slab?
    /// Where the last buffer handed out starts in `current`.
    @exclusivity(unchecked) private var lentStart = 0
    /// Waiting connections, oldest first from `waitersHead`; an entry whose id is no longer in
    /// `waiting` left the queue (`cancelWait`) and is skipped.
    private var waiters: [BufferWaiter] = []
    @exclusivity(unchecked) private var waitersHead = 0
    @exclusivity(unchecked) private var waiting = Set<ObjectIdentifier>()
    /// Waiters woken per slab that comes back: about the reads one slab serves.
    let wakesPerSlab: Int
    /// Slabs alive (in use or free), for metrics and tests.
    @exclusivity(unchecked) private(set) var liveSlabs = 0

    init(slabSize: Int = 512 * 1024, maxReadSize: Int = 256 * 1024, budget: Int = 16 << 20, maxFreeSlabs: Int? = nil) {
        self.slabSize = slabSize
        self.maxReadSize = min(maxReadSize, slabSize)
        self.maxSlabs = max(2, budget / slabSize)
        self.maxFreeSlabs = maxFreeSlabs ?? max(2, budget / slabSize) // keep them mapped: no page-fault churn
        freeSlabs.reserveCapacity(self.maxFreeSlabs)
        wakesPerSlab = max(2, slabSize / (64 * 1024))
    }

    /// Connections waiting for a buffer (for metrics and tests).
    var waiterCount: Int { waiting.count }

    /// A read could get a buffer now without waiting for a slab to come back.
    private var hasRoom: Bool {
        (current.map { $0.tail >= maxReadSize } ?? false) || !freeSlabs.isEmpty || liveSlabs < maxSlabs
    }

    /// Memory for the next read (at most `maxReadSize`), or nil when every slab is in use; then
    /// `waiter` is told when one comes back.
    func readBuffer(for waiter: BufferWaiter) -> UnsafeMutableRawBufferPointer? {
        if let slab = current, slab.tail < maxReadSize {
            current = nil
            release(slab)
        }
        if current == nil {
            guard let slab = takeSlab() else {
                if waiting.insert(ObjectIdentifier(waiter)).inserted { waiters.append(waiter) }
                return nil
            }
            current = slab
        }
        let slab = current!
        lentStart = slab.filled
        if !waiting.isEmpty { wakeWaiters(1) }  // a read served: the next in line may find room too
        return UnsafeMutableRawBufferPointer(rebasing: slab.memory[slab.filled..<(slab.filled + maxReadSize)])
    }

    /// `count` bytes arrived in the buffer last handed out: returns where they are. The caller
    /// retains the slab for every range it keeps.
    func received(_ count: Int) -> (slab: Slab, start: Int) {
        let slab = current!
        precondition(slab.filled == lentStart, "a read callback without its allocation")
        slab.filled += count
        return (slab, lentStart)
    }

    private func takeSlab() -> Slab? {
        let slab: Slab
        if let s = freeSlabs.popLast() {
            slab = s
        } else {
            guard liveSlabs < maxSlabs else { return nil }
            slab = Slab(size: slabSize)
            liveSlabs += 1
        }
        slab.filled = 0
        slab.references = 1
        return slab
    }

    func retain(_ slab: Slab) { slab.references += 1 }

    /// A small slab of its own holding a copy of `bytes` (a few bytes a parser held back between
    /// reads), outside the pool's budget; it is freed once its last reference goes.
    func slab(copying bytes: [UInt8]) -> Slab {
        let slab = Slab(size: max(bytes.count, 1))
        slab.pooled = false
        bytes.withUnsafeBytes { slab.memory.copyMemory(from: $0) }
        slab.filled = bytes.count
        return slab
    }

    func release(_ slab: Slab) {
        slab.references -= 1
        precondition(slab.references >= 0, "slab released twice")
        guard slab.references == 0, slab.pooled else { return }
        if freeSlabs.count < maxFreeSlabs || !waiting.isEmpty {
            freeSlabs.append(slab)
        } else {
            liveSlabs -= 1 // deinit unmaps it
        }
        if !waiting.isEmpty { wakeWaiters(wakesPerSlab) }
    }

    /// `waiter` no longer waits (its connection is closing). If it had been woken and will not
    /// read, the next waiter takes its turn.
    func cancelWait(_ waiter: BufferWaiter) {
        // Every connection's close asks; most never waited (then no hashing at all).
        if !waiting.isEmpty { waiting.remove(ObjectIdentifier(waiter)) }
        if waiting.isEmpty {
            if !waiters.isEmpty { waiters.removeAll(keepingCapacity: true) }  // only stale entries are left
            waitersHead = 0
        } else if hasRoom {
            wakeWaiters(1)
        }
    }

    /// Wakes a batch if there is room and nobody is reading into it: the server's periodic
    /// sweep calls this so that a wake lost to a connection that closed cannot stall the rest.
    func wakeIfRoom() {
        if !waiting.isEmpty && hasRoom { wakeWaiters(wakesPerSlab) }
    }

    private func wakeWaiters(_ count: Int) {
        var woken = 0
        while woken < count, waitersHead < waiters.count {
            let w = waiters[waitersHead]
            waitersHead += 1
            guard waiting.remove(ObjectIdentifier(w)) != nil else { continue }
            woken += 1
            w.buffersAvailable()  // may call back into the pool (readBuffer, cancelWait)
        }
        if waitersHead == waiters.count {
            waiters.removeAll(keepingCapacity: true)
            waitersHead = 0
        } else if waitersHead > 1024 && waitersHead * 2 > waiters.count {
            waiters.removeFirst(waitersHead)
            waitersHead = 0
        }
    }
}
