import DataStreamCore
import Glibc

/// Memory for small seed uploads held whole until they are stored (`Connection`'s small path),
/// reused from one upload to the next instead of a `malloc` and `free` each: a 4 KiB block is
/// beyond glibc's per-thread cache, and its `malloc` was a third of the allocator's share of the
/// loop thread.
///
/// Blocks come in five sizes (4, 8, 16, 32 and 64 KiB: each upload takes the smallest that holds
/// it); at most 1 MiB of free blocks is kept per size, the rest is freed. Owned by `Server` and
/// used on its loop thread only. A block handed out belongs to the connection that took it
/// until it comes back through `give`; `deinit` frees the blocks kept.
final class SmallBuffers {
    static let largest = SmallUploadBlocks.largest
    private static let smallest = SmallUploadBlocks.smallest
    private static let keptBytesPerSize = 1 << 20

    private static let sizes = 5
    /// Free blocks of each size, as a list threaded through the blocks themselves (each free
    /// block's first word points to the next): taking and giving touch no array.
    private let heads = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: sizes)
    private let counts = UnsafeMutablePointer<Int>.allocate(capacity: sizes)

    init() {
        heads.initialize(repeating: nil, count: Self.sizes)
        counts.initialize(repeating: 0, count: Self.sizes)
    }

    private static func sizeIndex(_ capacity: Int) -> Int { (capacity / smallest).trailingZeroBitCount }

    /// A buffer of exactly `bytes` bytes (inside a block of `capacity(for: bytes)`).
    func take(_ bytes: Int) -> UnsafeMutableRawBufferPointer {
        let capacity = SmallUploadBlocks.capacity(for: bytes)
        let i = Self.sizeIndex(capacity)
        let block: UnsafeMutableRawPointer
        if let head = heads[i] {
            heads[i] = head.load(as: UnsafeMutableRawPointer?.self)
            counts[i] -= 1
            block = head
        } else {
            block = malloc(capacity)!
        }
        return UnsafeMutableRawBufferPointer(start: block, count: bytes)
    }

    /// Returns a buffer `take` handed out.
    func give(_ buffer: UnsafeMutableRawBufferPointer) {
        let capacity = SmallUploadBlocks.capacity(for: buffer.count)
        let i = Self.sizeIndex(capacity)
        let block = buffer.baseAddress!
        guard counts[i] * capacity < Self.keptBytesPerSize else {
            Glibc.free(block)
            return
        }
        block.storeBytes(of: heads[i], as: UnsafeMutableRawPointer?.self)
        heads[i] = block
        counts[i] += 1
    }

    /// Free blocks kept for reuse, in bytes.
    var keptBytes: Int { (0..<Self.sizes).reduce(0) { $0 + counts[$1] * (Self.smallest << $1) } }

    deinit {
        for i in 0..<Self.sizes {
            while let block = heads[i] {
                heads[i] = block.load(as: UnsafeMutableRawPointer?.self)
                Glibc.free(block)
            }
        }
        heads.deallocate()
        counts.deallocate()
    }
}
