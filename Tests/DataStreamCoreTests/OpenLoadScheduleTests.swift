import DataStreamCore
import Testing

@Suite struct OpenLoadScheduleTests {
    let ms: UInt64 = 1_000_000

    @Test func uploadsFallDueAtTheRateFromTheStart() {
        let s = OpenLoadSchedule(rate: 1_000, start: 5 * ms)
        #expect(s.due(0) == 5 * ms)
        #expect(s.due(1) == 6 * ms)
        #expect(s.due(1_000) == 1_005 * ms)
        #expect(s.dueCount(now: 4 * ms) == 0)
        #expect(s.dueCount(now: 5 * ms) == 1)
        #expect(s.dueCount(now: 6 * ms - 1) == 1)
        #expect(s.dueCount(now: 15 * ms) == 11)
        let slow = OpenLoadSchedule(rate: 2.5, start: 0)
        #expect(slow.due(1) == 400 * ms)
        #expect(slow.dueCount(now: 399 * ms) == 1)
        #expect(slow.dueCount(now: 400 * ms) == 2)
    }

    @Test func startsAreCountedAgainstWhatIsDueAndLatenessIsRecorded() {
        var s = OpenLoadSchedule(rate: 1_000, start: 0)
        // At 10 ms eleven are due; the generator starts them all now.
        #expect(s.dueCount(now: 10 * ms) == 11)
        var lateness: [UInt64] = []
        for _ in 0..<11 {
            let (index, dueAt) = s.startNext(now: 10 * ms)
            lateness.append(10 * ms - dueAt)
            #expect(dueAt == UInt64(index) * ms)
        }
        #expect(s.started == 11)
        #expect(s.dueCount(now: 10 * ms) == 0)
        #expect(s.maxLag == 10 * ms)
        // Late by more than 1 ms: the first nine (due at 0..8 ms).
        #expect(s.lateStarts == 9)
        #expect(s.untilNext(now: 10 * ms) == 1 * ms)
        // On time: nothing more is counted late.
        _ = s.startNext(now: 11 * ms)
        #expect(s.lateStarts == 9)
    }

    /// Coordinated omission corrected: latency from when the upload was due, never less than
    /// from when it started.
    @Test func correctedLatencyCountsTheWaitBeforeTheStart() {
        let l = OpenLoadSchedule.latency(dueAt: 10 * ms, startedAt: 250 * ms, finishedAt: 260 * ms)
        #expect(l.corrected == 250 * ms)
        #expect(l.uncorrected == 10 * ms)
        let onTime = OpenLoadSchedule.latency(dueAt: 10 * ms, startedAt: 10 * ms, finishedAt: 12 * ms)
        #expect(onTime.corrected == onTime.uncorrected)
    }
}
