import DataStreamCore

/// A small seed upload held whole in memory until one work item stores it (`Store.storeSmall`):
/// its share of the small-upload budget and its bytes. When one read brought them all (the usual
/// case) they stay in the receive slab they landed in, retained until stored: no copy. Otherwise
/// they are copied into a block of `SmallBuffers` as they arrive, so no slab stays pinned while
/// a slow client sends the rest.
///
/// A value owned by its `Connection`, inactive between small uploads (a plain value, not an
/// optional: reading a field of it then copies nothing); `begin` starts one, and `free` gives
/// back the slab and block it holds.
struct SmallUpload {
    /// Bytes of the server's small-upload budget it holds (its block's capacity); 0 when no
    /// small upload is in progress.
    private(set) var reserved = 0
    /// The size the client declared.
    private(set) var declared = 0
    private var slab: Slab?
    private var slabStart = 0
    private var block: UnsafeMutableRawBufferPointer?
    private(set) var filled = 0
    /// A work item is writing the bytes: they may be freed only once it completes.
    var storing = false
    /// The size being stored (the declared size, for the log line).
    var size: UInt64 = 0
    /// The machine finished the upload during the read being processed: it is stored once the
    /// rest of that read has been looked at (bytes past the declared size cancel it).
    var pendingFinish: (prefix: SeedDigits, size: UInt64)?

    /// Whether a small upload is in progress.
    var isActive: Bool { reserved > 0 }

    /// Starts a small upload of `declared` bytes holding `reserved` bytes of the budget.
    mutating func begin(reserved: Int, declared: Int) {
        precondition(!isActive && reserved > 0, "a small upload begun twice")
        self.reserved = reserved
        self.declared = declared
        filled = 0
        storing = false
        pendingFinish = nil
    }

    /// Takes `count` bytes of the upload from `slab` at `start`. False if they go past the
    /// declared size (nothing taken). `completing`: these are all its bytes, so when nothing came
    /// before they are kept where they landed.
    mutating func append(_ slab: Slab, start: Int, count: Int, completing: Bool, pool: BufferPool, blocks: SmallBuffers) -> Bool {
        guard filled + count <= declared else { return false }
        if completing && filled == 0 {
            pool.retain(slab)
            self.slab = slab
            slabStart = start
            filled = count
            return true
        }
        let block = self.block ?? blocks.take(declared)
        self.block = block
        UnsafeMutableRawBufferPointer(rebasing: block[filled...]).copyMemory(from: UnsafeRawBufferPointer(rebasing: slab.memory[start..<(start + count)]))
        filled += count
        return true
    }

    /// The bytes received so far (valid until `free`).
    var bytes: UnsafeRawBufferPointer {
        if let slab { return UnsafeRawBufferPointer(rebasing: slab.memory[slabStart..<(slabStart + filled)]) }
        if let block { return UnsafeRawBufferPointer(rebasing: block[0..<filled]) }
        return UnsafeRawBufferPointer(start: nil, count: 0)  // no data bytes (an empty file, or all digits)
    }

    /// Gives the slab and block back and ends the upload; returns the budget bytes it held.
    mutating func free(pool: BufferPool, blocks: SmallBuffers) -> Int {
        defer { reserved = 0 }
        filled = 0
        pendingFinish = nil
        if let block {
            self.block = nil
            blocks.give(block)
        }
        if let slab {
            self.slab = nil
            pool.release(slab)
        }
        return reserved
    }
}
