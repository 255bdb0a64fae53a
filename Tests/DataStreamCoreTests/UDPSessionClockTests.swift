import Testing
@testable import DataStreamCore

/// Transition-by-transition tests of a native UDP session's timeouts: microseconds passed in.
struct UDPSessionClockTests {
    let second: UInt64 = 1_000_000

    @Test func anOpeningSessionTimesOutFromItsStart() {
        let c = UDPSessionClock(idleTimeout: 30, linger: 30, now: 5 * second)
        #expect(c.tick(now: 35 * second, lastActivity: 0) == .none)
        #expect(c.tick(now: 35 * second + 1, lastActivity: 0) == .closeIdle)
    }

    @Test func aReceivingSessionPollsUntilTheSenderGoesQuiet() {
        var c = UDPSessionClock(idleTimeout: 30, linger: 30, now: 0)
        c.opened()
        #expect(c.tick(now: 100 * second, lastActivity: 71 * second) == .poll)
        #expect(c.tick(now: 100 * second, lastActivity: 70 * second - 1) == .closeIdle)
        // A clock that went backwards never closes it.
        #expect(c.tick(now: 10, lastActivity: 20) == .poll)
    }

    @Test func aFinishedSessionLingersThenEnds() {
        var c = UDPSessionClock(idleTimeout: 30, linger: 10, now: 0)
        c.opened()
        #expect(!c.hasFinished)
        c.finished(now: 50 * second)
        #expect(c.hasFinished)
        #expect(c.tick(now: 60 * second, lastActivity: 0) == .none)  // no idle close while lingering
        #expect(c.tick(now: 60 * second + 1, lastActivity: 0) == .endLinger)
        c.finished(now: 100 * second)  // a second report does not restart the linger
        #expect(c.tick(now: 61 * second, lastActivity: 0) == .endLinger)
    }

    @Test func limitsTooLongForTheClockSaturateInsteadOfTrapping() {
        var c = UDPSessionClock(idleTimeout: .infinity, linger: 1e300, now: 0)
        #expect(c.tick(now: UInt64.max, lastActivity: 0) == .none)
        c.opened()
        #expect(c.tick(now: UInt64.max, lastActivity: 0) == .poll)
        #expect(TimeLimit.units(0, perSecond: 1e6) == nil)
        #expect(TimeLimit.units(-1, perSecond: 1e6) == nil)
        #expect(TimeLimit.units(1.5, perSecond: 1e6) == 1_500_000)
        #expect(TimeLimit.units(.infinity, perSecond: 1e9) == .max)
    }
}
