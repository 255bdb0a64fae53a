import Testing
@testable import DataStreamCore

/// The disk space an upload holds, transition by transition.
struct DiskHoldTests {
    let step = DiskHold.growthStep

    @Test func aNativeUploadHoldsItsSizeAndNeverGrows() {
        var h = DiskHold()
        h.fixed(1000)
        #expect(h.bytesArrived(5000) == nil)
        #expect(h.release() == 1000)
        #expect(h.held == 0)
    }

    @Test func aSeedUploadGrantedItsLongestReadingNeedsNoMore() {
        var h = DiskHold()
        h.growing(upTo: 123_456, granted: 123_456)
        #expect(h.bytesArrived(123_456) == nil)
        #expect(h.release() == 123_456)
    }

    @Test func aSeedUploadHeldAtItsShortestReadingGrowsInStepsUpToItsLongest() {
        var h = DiskHold()
        let longest = 3 * step
        h.growing(upTo: longest, granted: 10)
        #expect(h.bytesArrived(10) == nil)  // exactly what is held
        #expect(h.bytesArrived(1) == step)  // one past: a whole step
        h.grew(by: step)
        #expect(h.held == 10 + step)
        #expect(h.bytesArrived(step) == step)  // received 11 + step > held: another step
        h.grew(by: step)
        // Past the next step at once: at least what arrived, never past the longest reading.
        #expect(h.bytesArrived(2 * step) == longest - (10 + 2 * step))
        h.grew(by: longest - (10 + 2 * step))
        #expect(h.held == longest)
        #expect(h.release() == longest)
        #expect(h.bytesArrived(1) == nil)  // released: holds nothing, grows no more
    }
}
