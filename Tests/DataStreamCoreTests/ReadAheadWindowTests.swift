import DataStreamCore
import Testing

@Suite struct ReadAheadWindowTests {
    @Test func readsGoAheadOneAtATimeUntilTheRingIsFull() {
        // 10 units of 100 bytes, the last one 50; a ring of 4 slots; reads of up to 3 units.
        var w = ReadAheadWindow(start: 0, end: 950, unitSize: 100, capacity: 4, maxReadBytes: 300)
        #expect(w.unitCount == 10)
        #expect(w.ringBytes == 400)
        let first = w.nextRead()
        #expect(first == .init(fileOffset: 0, ringOffset: 0, count: 300))
        #expect(w.nextRead() == nil)  // one read at a time
        #expect(w.completed(got: 300) == .read)
        #expect(w.ready == 3)
        #expect(w.nextRead() == .init(fileOffset: 300, ringOffset: 300, count: 100))  // one free slot
        #expect(w.completed(got: 100) == .read)
        #expect(w.nextRead() == nil)  // the ring is full
        #expect(w.location(of: 3)! == (300, 100))
        #expect(w.location(of: 4) == nil)
    }

    @Test func releasedSlotsAreReusedWithoutWrappingInOneRead() {
        var w = ReadAheadWindow(start: 0, end: 950, unitSize: 100, capacity: 4, maxReadBytes: 300)
        _ = w.nextRead(); _ = w.completed(got: 300)
        _ = w.nextRead(); _ = w.completed(got: 100)
        w.release(below: 2)
        #expect(w.location(of: 1) == nil)
        // Units 4 and 5 go into slots 0 and 1; the read starts at the ring's start.
        #expect(w.nextRead() == .init(fileOffset: 400, ringOffset: 0, count: 200))
        #expect(w.completed(got: 200) == .read)
        #expect(w.location(of: 5)! == (100, 100))
        w.release(below: 6)
        // Units 6 and 7 in slots 2 and 3: a read stops at the ring's end.
        #expect(w.nextRead() == .init(fileOffset: 600, ringOffset: 200, count: 200))
        #expect(w.completed(got: 200) == .read)
        // Units 8 and 9: the last is short.
        #expect(w.nextRead() == .init(fileOffset: 800, ringOffset: 0, count: 150))
        #expect(w.completed(got: 150) == .read)
        #expect(w.allRead)
        #expect(w.location(of: 9)! == (100, 50))
        #expect(w.nextRead() == nil)
    }

    @Test func releaseNeverPassesWhatIsReady() {
        var w = ReadAheadWindow(start: 0, end: 1000, unitSize: 100, capacity: 4, maxReadBytes: 400)
        w.release(below: 3)
        #expect(w.released == 0)
        #expect(w.nextRead()?.count == 400)
    }

    @Test func aShortReadAsksForTheRestAndTheEndOfFileEndsTheWindow() {
        var w = ReadAheadWindow(start: 1000, end: 1600, unitSize: 200, capacity: 8, maxReadBytes: 600)
        #expect(w.nextRead() == .init(fileOffset: 1000, ringOffset: 0, count: 600))
        // The kernel may return less than asked before the end of the file.
        #expect(w.completed(got: 250) == .readRest(.init(fileOffset: 1250, ringOffset: 250, count: 350)))
        #expect(w.ready == 0)
        // Then the end of the file: someone truncated it to 1,250 bytes.
        #expect(w.completed(got: 0) == .fileShrank(endedBefore: 1250))
        #expect(w.failed)
        #expect(w.nextRead() == nil)
        #expect(w.location(of: 0) == nil)
    }

    @Test func aRangeIsOffsetIntoTheFileAndAnEmptyOneNeedsNoRead() {
        var w = ReadAheadWindow(start: 4096, end: 4096 + 250, unitSize: 100, capacity: 16, maxReadBytes: 1 << 20)
        #expect(w.ringBytes == 300)  // no more slots than units
        #expect(w.nextRead() == .init(fileOffset: 4096, ringOffset: 0, count: 250))
        #expect(w.completed(got: 250) == .read)
        #expect(w.ready == 3)
        var empty = ReadAheadWindow(start: 10, end: 10, unitSize: 100, capacity: 4, maxReadBytes: 100)
        #expect(empty.allRead)
        #expect(empty.nextRead() == nil)
    }

    @Test func newChunksWaitForWhatHasBeenRead() {
        var s = UDPSendScheduler(chunkCount: 10, windowChunks: 10)
        #expect(s.next(readyBelow: 2)! == (0, false))
        #expect(s.next(readyBelow: 2)! == (1, false))
        #expect(s.next(readyBelow: 2) == nil)
        #expect(s.next(readyBelow: 3)! == (2, false))
    }
}
