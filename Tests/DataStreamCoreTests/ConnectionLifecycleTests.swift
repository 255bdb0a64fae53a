import Testing
@testable import DataStreamCore

/// Transition-by-transition tests of the connection lifecycle: time is a number passed in.
struct ConnectionLifecycleTests {
    typealias L = ConnectionLifecycle
    let second: UInt64 = 1_000_000_000

    func lifecycle(header: Double = 30, idle: Double = 60, at start: UInt64 = 1_000) -> L {
        L(configuration: .init(headerTimeout: header, idleTimeout: idle), now: start)
    }

    // MARK: header timeout

    @Test func headerTimeoutRunsFromAcceptUntilAnUploadBegins() {
        var l = lifecycle(header: 30, idle: 600)
        #expect(l.timerFired(now: 1_000 + 30 * second, listening: true, waitingForClient: true) == .none)
        #expect(l.timerFired(now: 1_000 + 30 * second + 1, listening: true, waitingForClient: true) == .timeOut(.headerTimeout(seconds: 30)))
    }

    @Test func headerTimeoutStopsForGoodOnceAnUploadBegan() {
        var l = lifecycle(header: 30, idle: 0)
        l.uploadBegan()
        #expect(l.timerFired(now: 1_000 + 3_600 * second, listening: true, waitingForClient: true) == .none)
        l.readingResumed(now: 2_000)
        #expect(l.timerFired(now: 1_000 + 3_600 * second, listening: true, waitingForClient: true) == .none)
    }

    @Test func theServersOwnPauseRestartsTheHeaderClock() {
        var l = lifecycle(header: 30, idle: 600)
        // Not listening (no buffer free): no clock runs out, however late.
        #expect(l.timerFired(now: 1_000 + 100 * second, listening: false, waitingForClient: true) == .none)
        l.readingResumed(now: 100 * second)
        #expect(l.timerFired(now: 129 * second, listening: true, waitingForClient: true) == .none)
        #expect(l.timerFired(now: 131 * second, listening: true, waitingForClient: true) == .timeOut(.headerTimeout(seconds: 30)))
    }

    @Test func bytesFromTheClientDoNotRestartTheHeaderClock() {
        var l = lifecycle(header: 30, idle: 600)
        l.clientSent(now: 29 * second)
        #expect(l.timerFired(now: 31 * second, listening: true, waitingForClient: true) == .timeOut(.headerTimeout(seconds: 30)))
    }

    // MARK: idle timeout

    @Test func idleTimeoutRunsFromTheClientsLastByteWhileItsMoveIsNext() {
        var l = lifecycle(header: 0, idle: 60)
        l.uploadBegan()
        l.clientSent(now: 10 * second)
        #expect(l.timerFired(now: 70 * second, listening: true, waitingForClient: true) == .none)
        #expect(l.timerFired(now: 71 * second, listening: true, waitingForClient: false) == .none)
        #expect(l.timerFired(now: 71 * second, listening: true, waitingForClient: true) == .timeOut(.idleTimeout(seconds: 60)))
    }

    @Test func aClockGoingBackwardsNeverTimesOut() {
        var l = lifecycle(header: 1, idle: 1, at: 100 * second)
        #expect(l.timerFired(now: 50 * second, listening: true, waitingForClient: true) == .none)
    }

    @Test func zeroTurnsATimeoutOffAndHugeOnesSaturate() {
        var off = lifecycle(header: 0, idle: 0)
        #expect(off.timerFired(now: UInt64.max, listening: true, waitingForClient: true) == .none)
        var huge = lifecycle(header: 1e300, idle: .infinity)
        #expect(huge.timerFired(now: UInt64.max, listening: true, waitingForClient: true) == .none)
    }

    // MARK: the server's drain

    @Test func drainingEndsAnIdleConnectionOnce() {
        var l = lifecycle()
        #expect(l.serverDraining(uploadInProgress: true) == .none)
        #expect(l.serverDraining(uploadInProgress: false) == .shutDown)
        #expect(l.serverDraining(uploadInProgress: false) == .none)
        // Told to end: no timeout fires any more.
        #expect(l.timerFired(now: UInt64.max, listening: true, waitingForClient: true) == .none)
    }

    @Test func theDeadlineCutsWhatWaitsOnItsClient() {
        let l = lifecycle()
        #expect(l.drainDeadlinePassed(waitingForClient: true, uploadInProgress: true) == .cut)
        #expect(l.drainDeadlinePassed(waitingForClient: false, uploadInProgress: false) == .cut)
        #expect(l.drainDeadlinePassed(waitingForClient: false, uploadInProgress: true) == .none)
    }

    // MARK: paths

    @Test func smallSeedUploadsAreHeldWhileTheBudgetLasts() {
        let l = L(configuration: .init(smallUploadBudget: 64 << 10), now: 0)
        #expect(l.seedPath(declared: 0, smallBytesInUse: 0) == .small(capacity: 4096))
        #expect(l.seedPath(declared: 5_000, smallBytesInUse: 0) == .small(capacity: 8192))
        #expect(l.seedPath(declared: 64 << 10, smallBytesInUse: 0) == .small(capacity: 64 << 10))
        #expect(l.seedPath(declared: (64 << 10) + 1, smallBytesInUse: 0) == .streamed)
        #expect(l.seedPath(declared: 4096, smallBytesInUse: (64 << 10) - 4096) == .small(capacity: 4096))
        #expect(l.seedPath(declared: 4096, smallBytesInUse: (64 << 10) - 4095) == .streamed)
    }

    @Test func largeUploadsAreDrainedMidSizedOnesWhenTheySpliceOrFewRun() {
        var l = L(configuration: .init(drainThreshold: 4 << 20, drainThresholdWhenFew: 256 << 10, fewDrains: 4), now: 0)
        #expect(l.shouldDrainSocket(bytesExpected: 4 << 20, splices: false, drainsRunning: 100))
        #expect(!l.shouldDrainSocket(bytesExpected: (256 << 10) - 1, splices: true, drainsRunning: 0))
        #expect(l.shouldDrainSocket(bytesExpected: 256 << 10, splices: true, drainsRunning: 100))
        #expect(l.shouldDrainSocket(bytesExpected: 256 << 10, splices: false, drainsRunning: 3))
        #expect(!l.shouldDrainSocket(bytesExpected: 256 << 10, splices: false, drainsRunning: 4))
        #expect(l.readsWithoutPolling(bytesExpected: (256 << 10) - 1))
        #expect(!l.readsWithoutPolling(bytesExpected: 256 << 10))
        l.socketDrainRefused()
        #expect(!l.shouldDrainSocket(bytesExpected: 1 << 30, splices: true, drainsRunning: 0))
    }

    @Test func theServersOwnPausesAreTheOnesThatStopTheClocks() {
        #expect(ReadPauses.serversOwn.contains(.buffer))
        #expect(ReadPauses.serversOwn.contains(.heldInput))
        #expect(!ReadPauses.serversOwn.contains(.flow))
        #expect(!ReadPauses.serversOwn.contains(.draining))
    }
}
