import DataStreamCore
@testable import DataStream
import Testing

/// The receive-slab pool's waiting queue: who is woken when room comes back, and that leaving
/// the queue works (transition by transition; the end-to-end backpressure test runs it on sockets).
struct BufferPoolTests {
    final class Waiter: BufferWaiter {
        var wakes = 0
        func buffersAvailable() { wakes += 1 }
    }

    /// A pool of two 512 KiB slabs, both filled by reads whose ranges are still held: returns
    /// the held ranges (slab, reference count) so a test can give a slab back.
    private func filledPool() -> (BufferPool, [Slab]) {
        let pool = BufferPool(slabSize: 512 * 1024, maxReadSize: 256 * 1024, budget: 1 << 20)
        let reader = Waiter()
        var held: [Slab] = []
        while pool.readBuffer(for: reader) != nil {
            let (slab, _) = pool.received(256 * 1024)
            pool.retain(slab)  // the range stays queued for a write
            held.append(slab)
        }
        pool.cancelWait(reader)
        return (pool, held)
    }

    @Test func aReturnedSlabWakesABatchOldestFirstNotEveryone() {
        let (pool, held) = filledPool()
        #expect(held.count == 4)  // two slabs, two 256 KiB reads each
        let waiters = (0..<100).map { _ in Waiter() }
        for w in waiters { #expect(pool.readBuffer(for: w) == nil) }
        #expect(pool.waiterCount == 100)
        // The same waiter asking again is queued once.
        #expect(pool.readBuffer(for: waiters[0]) == nil)
        #expect(pool.waiterCount == 100)

        pool.release(held[0])
        #expect(waiters.allSatisfy { $0.wakes == 0 })  // the slab still holds the second range
        pool.release(held[1])
        let woken = waiters.filter { $0.wakes == 1 }.count
        #expect(woken == pool.wakesPerSlab)
        #expect(waiters.prefix(pool.wakesPerSlab).allSatisfy { $0.wakes == 1 })
        #expect(pool.waiterCount == 100 - pool.wakesPerSlab)
    }

    @Test func eachReadServedWakesOneMoreWhileOthersWait() {
        let (pool, held) = filledPool()
        let waiters = (0..<20).map { _ in Waiter() }
        for w in waiters { _ = pool.readBuffer(for: w) }
        pool.release(held[0]); pool.release(held[1])
        let firstBatch = pool.wakesPerSlab
        // The first woken reader gets its buffer; that wakes the next in line.
        #expect(pool.readBuffer(for: waiters[0]) != nil)
        _ = pool.received(64 * 1024)
        #expect(waiters[firstBatch].wakes == 1)
        #expect(waiters[firstBatch + 1].wakes == 0)
    }

    @Test func leavingTheQueueSkipsTheWaiterAndPassesItsTurnOn() {
        let (pool, held) = filledPool()
        let waiters = (0..<20).map { _ in Waiter() }
        for w in waiters { _ = pool.readBuffer(for: w) }
        // Closing connections leave the queue while there is no room: nobody is woken.
        pool.cancelWait(waiters[0])
        pool.cancelWait(waiters[1])
        #expect(pool.waiterCount == 18)
        #expect(waiters.allSatisfy { $0.wakes == 0 })
        pool.release(held[0]); pool.release(held[1])
        let batch = pool.wakesPerSlab
        #expect(waiters[0].wakes == 0 && waiters[1].wakes == 0)
        #expect(waiters[2..<(2 + batch)].allSatisfy { $0.wakes == 1 })
        #expect(waiters[2 + batch].wakes == 0)
        // A woken waiter that closes instead of reading hands its turn to the next one.
        pool.cancelWait(waiters[2])
        #expect(waiters[2 + batch].wakes == 1)
        #expect(waiters[3 + batch].wakes == 0)
    }

    @Test func theSweepWakesABatchOnlyWhenThereIsRoom() {
        let (pool, held) = filledPool()
        let waiters = (0..<40).map { _ in Waiter() }
        for w in waiters { _ = pool.readBuffer(for: w) }
        pool.wakeIfRoom()  // no room: nothing happens
        #expect(waiters.allSatisfy { $0.wakes == 0 })
        for s in held { pool.release(s) }  // two slabs back: two batches
        let batch = pool.wakesPerSlab
        #expect(waiters.filter { $0.wakes == 1 }.count == 2 * batch)
        // Nobody read into the free slabs (say the woken ones had nothing to send yet): the
        // sweep wakes the next batch, once per call, and never anyone twice.
        pool.wakeIfRoom()
        #expect(waiters.filter { $0.wakes == 1 }.count == 3 * batch)
        #expect(waiters.allSatisfy { $0.wakes <= 1 })
        #expect(pool.waiterCount == 40 - 3 * batch)
    }
}

/// The blocks small seed uploads are held in: sizes, reuse, and the bound on what is kept.
struct SmallBuffersTests {
    @Test func eachUploadTakesTheSmallestBlockThatHoldsIt() {
        #expect(SmallUploadBlocks.capacity(for: 0) == 4096)
        #expect(SmallUploadBlocks.capacity(for: 4096) == 4096)
        #expect(SmallUploadBlocks.capacity(for: 4097) == 8192)
        #expect(SmallUploadBlocks.capacity(for: 40_000) == 65_536)
        #expect(SmallUploadBlocks.capacity(for: SmallBuffers.largest) == SmallBuffers.largest)
    }

    @Test func aReturnedBlockIsReusedForAnUploadOfTheSameSizeOnly() {
        let buffers = SmallBuffers()
        let first = buffers.take(4000)
        #expect(first.count == 4000)
        first.initializeMemory(as: UInt8.self, repeating: 0xAB)
        buffers.give(first)
        #expect(buffers.keptBytes == 4096)
        let larger = buffers.take(5000)          // another size: a new block
        #expect(larger.baseAddress != first.baseAddress)
        let again = buffers.take(10)             // the same size: the kept block, 10 bytes of it
        #expect(again.baseAddress == first.baseAddress)
        #expect(again.count == 10)
        #expect(buffers.keptBytes == 0)
        buffers.give(again)
        buffers.give(larger)
        #expect(buffers.keptBytes == 4096 + 8192)
    }

    @Test func atMostOneMiBOfEachSizeIsKept() {
        let buffers = SmallBuffers()
        let taken = (0..<40).map { _ in buffers.take(SmallBuffers.largest) }
        #expect(Set(taken.map(\.baseAddress)).count == 40)
        for b in taken { buffers.give(b) }
        #expect(buffers.keptBytes == 1 << 20)    // 16 blocks of 64 KiB; the other 24 freed
    }
}
